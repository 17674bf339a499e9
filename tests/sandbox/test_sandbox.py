"""The sandbox, built for real: origin with its releases, two workspaces, two databases, two gunicorns."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from deployctl.cli import main as deployctl
from sample_app import sandbox
from tasks.process_state import is_alive
from tests.conftest import free_ports

pytestmark = pytest.mark.slow


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


# One sandbox per database kind for the whole module; the test that stops it comes last.
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if request.param == "postgres":
        request.getfixturevalue("postgres_admin_url")
    root = tmp_path_factory.mktemp("sbx") / "sbx"
    staging_port, production_port = free_ports(2)
    configs = sandbox.up(root, db=request.param, ports={"staging": staging_port, "production": production_port},
                         log=lambda *_: None)
    yield root, configs, request.param
    sandbox.down(root, log=lambda *_: None)
    if request.param == "postgres":
        sandbox.drop_postgres_databases(root)


def test_up_builds_both_environments_at_v1(built) -> None:  # type: ignore[no-untyped-def]
    root, configs, db = built
    origin = root / "origin.git"
    tags = git(origin, "tag", "--list").split()
    assert tags == ["v1", "v2", "v3", "v4", "v5"]
    v1 = git(origin, "rev-parse", "v1^{commit}")
    unmerged = git(origin, "rev-parse", "experiment/llm-scoring")
    assert subprocess.run(["git", "merge-base", "--is-ancestor", unmerged, "main"], cwd=origin).returncode == 1
    for env, config in configs.items():
        answer = httpx.get(config.service.base_url + "/api/health", timeout=5).json()
        assert answer["status"] == "ok", answer
        assert answer["version"] == v1
        assert answer["environment"] == env
        assert git(config.source.workspace, "rev-parse", "HEAD") == v1
    secrets = root / "sandbox.env"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    for path in (root / "environments").glob("*.toml"):
        text = path.read_text()
        assert "jobapp.db" not in text and "postgresql+psycopg" not in text, "a database URL leaked into " + path.name
    rows = {row.environment: row for row in sandbox.status(root)}
    assert rows["production"].revision == "0001" and rows["production"].sha == v1
    assert rows["staging"].health.startswith("ok")


def test_production_has_the_legacy_rows_staging_lacks(built) -> None:  # type: ignore[no-untyped-def]
    root, configs, db = built
    from deployments.secrets import resolve_app_environment
    from sqlalchemy import create_engine, text

    counts = {}
    for env, config in configs.items():
        engine = create_engine(resolve_app_environment(config)["JOBAPP_DATABASE_URL"])
        with engine.connect() as conn:
            counts[env] = (
                conn.execute(text("SELECT count(*) FROM jobs WHERE company IS NULL")).scalar_one(),
                conn.execute(text("SELECT count(*) - count(DISTINCT source_url) FROM jobs")).scalar_one(),
            )
        engine.dispose()
    assert counts["staging"] == (0, 0)
    assert counts["production"][0] > 0 and counts["production"][1] > 0


def test_sqlite_databases_run_in_wal_mode(built) -> None:  # type: ignore[no-untyped-def]
    """As production SQLite usually does: a backup must then see writes still in the WAL file."""
    import sqlite3
    from contextlib import closing

    from deployments.secrets import resolve_app_environment
    from sqlalchemy.engine import make_url

    root, configs, db = built
    if db != "sqlite":
        pytest.skip("SQLite only")
    for env, config in configs.items():
        path = make_url(resolve_app_environment(config)["JOBAPP_DATABASE_URL"]).database
        with closing(sqlite3.connect(str(path))) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal", env


def test_deployctl_check_passes_on_a_live_sandbox(built, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    root, configs, db = built
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(root / "environments"))
    assert deployctl(["check", "production"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert out.count("ok  ") == 16 and "FAIL" not in out and "all 16 checks passed" in out
    for line in ("app imports            service.preflight_command passed in", "migrations             alembic finds "
                 "its scripts in", "metrics                http://127.0.0.1:", "critical paths         "):
        assert line in out, out


def test_cli_sandbox_status_without_sandbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deployctl(["sandbox", "status", "--dir", str(tmp_path / "none")]) == 1
    assert "no sandbox at" in capsys.readouterr().out


def test_operator_edits_survive_up_and_reset_writes_afresh(built) -> None:  # type: ignore[no-untyped-def]
    root, configs, db = built
    ports = {e: int(c.service.base_url.rsplit(":", 1)[1]) for e, c in configs.items()}
    production = root / "environments" / "production.toml"
    secrets = root / "sandbox.env"
    pristine = production.read_text(), secrets.read_text()
    production.write_text(pristine[0].replace("timeout_seconds = 3600", "timeout_seconds = 1800"))
    secrets.write_text(pristine[1] + "EXTRA_FOR_MY_TOOLS=1\n")
    said: list[str] = []
    sandbox.up(root, db=db, ports=ports, log=said.append)
    assert "timeout_seconds = 1800" in production.read_text(), "an operator's edit was overwritten"
    assert secrets.read_text().endswith("EXTRA_FOR_MY_TOOLS=1\n")
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    kept = [line for line in said if line.startswith("kept")]
    assert len(kept) == 2 and all("--reset" in line for line in kept), said
    # Files nobody edited follow what up renders: staging's moves with its port.
    staging = root / "environments" / "staging.toml"
    sandbox.up(root, db=db, ports=ports, log=lambda *_: None, reset=True)
    assert (production.read_text(), secrets.read_text()) == pristine
    assert staging.read_text() == sandbox.render_environment("staging", str(root.resolve()), configs["staging"]
                                                            .service.python.as_posix(), ports["staging"])


def test_up_is_idempotent_and_down_stops_what_it_started(built) -> None:  # type: ignore[no-untyped-def]
    root, configs, db = built
    pids = {env: int(config.service.pid_file.read_text()) for env, config in configs.items()}
    workers = {env: [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
               for env, pid in pids.items()}
    sandbox.up(root, db=db, ports={e: int(c.service.base_url.rsplit(":", 1)[1]) for e, c in configs.items()},
               log=lambda *_: None)
    assert {env: int(c.service.pid_file.read_text()) for env, c in configs.items()} == pids
    stopped = sandbox.down(root, log=lambda *_: None)
    assert sorted(stopped) == sorted(pids.values())
    for pid in [*pids.values(), *(w for ws in workers.values() for w in ws)]:
        assert not is_alive(pid), f"process {pid} survived sandbox down"
    for config in configs.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(config.service.base_url + "/health", timeout=2)


def test_the_postgres_server_comes_from_the_libpq_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGPORT", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    assert sandbox.PostgresServer.from_environment().admin_url == "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    monkeypatch.setenv("PGHOST", "db.internal")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGUSER", "sandbox")
    server = sandbox.PostgresServer.from_environment()
    assert server.url("jobapp_x") == "postgresql+psycopg://sandbox@db.internal:6543/jobapp_x"
    root = Path("/srv/sbx")
    assert sandbox.database_url(root, "staging", "postgres", server).startswith("postgresql+psycopg://sandbox@db.internal:6543/jobapp_sbx_")
