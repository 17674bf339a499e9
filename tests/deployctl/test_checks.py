"""`deployctl check ENV`: every check runs and says what is wrong, on an environment that points at
nothing that exists (and changes nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployctl.checks import check_environment
from tests.conftest import free_ports
from tests.tasks.gunicorn_app import environment


def test_every_check_runs_and_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    (port,) = free_ports(1)
    config = environment(tmp_path / "env", port)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    results = {r.name: r for r in check_environment(config)}
    assert list(results) == ["secrets", "source repository", "workspace", "app interpreter", "app process",
                             "health", "database", "backups"]
    assert results["secrets"].ok and results["app interpreter"].ok
    assert not results["source repository"].ok and "does not exist" in results["source repository"].detail
    assert results["workspace"].detail == f"{config.source.workspace} does not exist"
    assert not results["app process"].ok and "no live process" in results["app process"].detail
    assert not results["health"].ok
    assert not results["database"].ok and "unable to open database file" in results["database"].detail
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "a check changed something"
