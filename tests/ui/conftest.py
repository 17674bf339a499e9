"""The browser tests leave their screenshots behind, and say where, however they end."""

from __future__ import annotations

import time

import pytest

from tests.ui.browser import SCREENSHOTS

_started = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    shots = [p for p in SCREENSHOTS.glob("*.png") if p.stat().st_mtime >= _started] if SCREENSHOTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"UI screenshots of this run ({len(shots)}, one per stage): {SCREENSHOTS}")
