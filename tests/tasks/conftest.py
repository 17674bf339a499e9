"""The gunicorn apps of the app's process tests (tests/tasks/gunicorn_app.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks.app_process import stop
from tests.tasks.gunicorn_app import App, make_app


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Makes an app (not yet started); every process it ever ran is gone after the test."""
    made: list[App] = []

    def make(worker: str = "uvicorn", reload_mode: str = "usr2") -> App:
        app = make_app(tmp_path / f"app{len(made)}", worker, reload_mode)
        made.append(app)
        return app

    yield make
    for app in made:
        try:
            stop(app.config, timeout=5)
        finally:
            app.kill_everything()
            app.http.close()
    left = {str(app.workspace): app.processes() for app in made}
    assert not any(left.values()), f"processes left running: {left}"


@pytest.fixture
def app(apps: Callable[..., App]) -> App:
    return apps()
