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
    assert list(results) == ["secrets", "source repository", "workspace", "app interpreter", "dependencies",
                             "app imports", "app process", "health", "database", "database variables", "migrations",
                             "migration lint", "metrics", "critical paths", "backups", "rollback order"]
    assert results["migration lint"].ok and results["migration lint"].detail.startswith("squawk 2.")
    assert "every finding warns (migrations.block is empty); no lock budget" in results["migration lint"].detail
    assert results["dependencies"].ok and "no [dependencies]" in results["dependencies"].detail
    # No maintenance mode: it passes, with what that means for a rollback.
    assert results["rollback order"].ok and results["rollback order"].warning
    assert "reverts the code before it undoes an expand-only migration" in results["rollback order"].detail
    assert results["database variables"].ok
    assert not results["migrations"].ok and "does not exist" in results["migrations"].detail
    assert not results["metrics"].ok and "did not answer" in results["metrics"].detail
    assert results["secrets"].ok and results["app interpreter"].ok
    assert not results["source repository"].ok and "does not exist" in results["source repository"].detail
    assert results["workspace"].detail == f"{config.source.workspace} does not exist"
    assert not results["app process"].ok and "no live process" in results["app process"].detail
    assert not results["health"].ok
    assert not results["database"].ok and "unable to open database file" in results["database"].detail
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "a check changed something"


def test_a_monorepo_configured_at_its_root_fails_check_and_passes_with_its_app_directory(tmp_path: Path) -> None:
    """The configuration that failed at a deploy's first step (alembic run from the repository's root:
    "Path doesn't exist: migrations") fails `check`; with source.app_directory it passes."""
    from tests.tasks.test_app_directory import environment as app_environment
    from tests.tasks.test_app_directory import make_monorepo

    import sqlite3

    repo = make_monorepo(tmp_path / "repo")
    sqlite3.connect(tmp_path / "live.db").close()  # the live database, still empty
    at_root = {r.name: r for r in check_environment(app_environment(tmp_path, repo, "."))}
    assert not at_root["migrations"].ok
    assert at_root["migrations"].detail == (f"{repo}/alembic.ini does not exist: set source.app_directory to the "
                                            "directory of the app's alembic.ini within its repository (or "
                                            "database.alembic_config to its path there)")
    in_backend = {r.name: r for r in check_environment(app_environment(tmp_path, repo, "backend"))}
    assert in_backend["migrations"].ok, in_backend["migrations"].detail
    assert in_backend["migrations"].detail == f"alembic finds its scripts in {repo / 'backend'}: head 0001, 1 pending"


def test_a_database_variable_set_by_hand_fails_check(tmp_path: Path) -> None:
    from tests.tasks.test_database_parts import environment as parts_environment

    url = f"sqlite:///{tmp_path / 'live.db'}"
    config = parts_environment(tmp_path, url, tmp_path, "", service_env=f'APP_DB_FILE = "{tmp_path / "live.db"}"')
    result = {r.name: r for r in check_environment(config)}["database variables"]
    assert not result.ok
    assert result.detail.startswith("the rehearsal would be refused: APP_DB_FILE ([service.env], the live database's file)")


def test_a_policy_naming_a_rule_squawk_does_not_know_fails_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.config import MigrationSafetyConfig

    monkeypatch.setenv("SERVICE_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    (port,) = free_ports(1)
    config = environment(tmp_path / "env", port).model_copy(update={
        "migrations": MigrationSafetyConfig(block=["ban-drop-colum"], max_lock_seconds=2)})
    result = next(r for r in check_environment(config) if r.name == "migration lint")
    assert not result.ok and "[migrations] names ban-drop-colum, which squawk does not know" in result.detail
