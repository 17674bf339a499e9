"""Every release passes its own test suite, checked out on its own, on fresh databases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .checkouts import Origin, app_env, git

pytestmark = pytest.mark.slow

# v1 is sample_app/jobapp itself, whose suite runs in place.
RELEASES = ("v2", "v3", "v4", "v5", "experiment/llm-scoring")


def test_each_release_passes_its_own_suite(origin: Origin, tmp_path: Path) -> None:
    running: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for ref in RELEASES:
        app_dir = tmp_path / ref.replace("/", "-")
        git("clone", "--quiet", str(origin.path), str(app_dir), cwd=tmp_path)
        git("checkout", "--quiet", ref, cwd=app_dir)
        log = tmp_path / f"{app_dir.name}.log"
        # Started together: the suites are independent and each spends time waiting on its databases.
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests"],
            cwd=app_dir,
            env=app_env("sqlite:///unused.db", tmp_path / "unused"),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        running[ref] = (process, log)
    failures = {}
    for ref, (process, log) in running.items():
        if process.wait(timeout=240) != 0:
            failures[ref] = log.read_text()[-3000:]
    assert not failures, "\n\n".join(f"--- {ref} ---\n{output}" for ref, output in failures.items())
    for ref, (_, log) in running.items():
        assert " passed" in log.read_text().splitlines()[-1], ref
