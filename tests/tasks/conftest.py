"""The gunicorn apps of the app's process tests (tests/tasks/gunicorn_app.py), and an empty database of
either kind for the tests that run on both."""

from __future__ import annotations

import sqlite3
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: a SQLite file in WAL mode, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        sqlite3.connect(tmp_path / "app.db").execute("PRAGMA journal_mode=WAL").close()
        return f"sqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("postgres_database"))
