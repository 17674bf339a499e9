"""Migrations of jobapp's real releases, run by the migration runner in the app's interpreter, on real
SQLite and PostgreSQL databases seeded with each profile's data."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import MigrationFailed, PreflightError
from deployments.secrets import resolve_app_environment
from sample_app.history import build_origin
from tasks.migrations import (
    MigrationStatus,
    PendingRevision,
    check_migrations,
    database_revision,
    downgrade,
    migration_status,
    run_migrations,
    upgrade,
)
from tasks.migrations import test_migrations as rehearse
from tests.alembic_projects import alembic_project, env_py
from tests.conftest import free_ports
from tests.sample_app.checkouts import Checkout, Database, git

PROJECT = Path(__file__).resolve().parents[2]
PYTHON = PROJECT / ".venv" / "bin" / "python"
URL_VARIABLE = "TASKS_TEST_MIGRATIONS_DATABASE_URL"
PASSWORD = "s3cret-Migr4tion-pw"
PRODUCTION_COUNTS = {"jobs": 200, "applications": 400, "documents": 40, "outbox": 120, "user_sessions": 60}
SALARY = PendingRevision("0002", "Salary range on jobs, and an index on jobs.company.", True)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Worktrees of jobapp's origin at v1..v4, shared by the module's tests and never changed."""
    root = tmp_path_factory.mktemp("jobapp")
    build_origin(root / "origin.git")
    git("clone", "--quiet", "--no-checkout", str(root / "origin.git"), str(root / "clone"), cwd=root)
    for tag in ("v1", "v2", "v3", "v4"):
        git("worktree", "add", "--quiet", "--detach", str(root / tag), tag, cwd=root / "clone")
    return {tag: root / tag for tag in ("v1", "v2", "v3", "v4")}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobapp.db'}"
    # trust authentication ignores the password, so it is there only to be looked for in messages.
    url = request.getfixturevalue("postgres_database")
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.engine.dispose()


def environment(tmp_path: Path, database_url: str, workspace: Path, database_settings: str = "") -> EnvironmentConfig:
    """The committed production file, its database URL in an env file, the app in `workspace`."""
    text_ = (PROJECT / "deployments" / "production.toml").read_text()
    text_ = text_.replace("../.sandbox", str(tmp_path)).replace('"../.venv/bin/python"', f'"{PYTHON}"')
    text_ = text_.replace('url = { env = "JOBAPP_PRODUCTION_DATABASE_URL" }',
                          f'url = {{ env = "{URL_VARIABLE}" }}{database_settings}')
    text_ = text_.replace(f'workspace = "{tmp_path}/production/app"', f'workspace = "{workspace}"')
    (tmp_path / "sandbox.env").write_text(f"{URL_VARIABLE}={database_url}\n")
    (tmp_path / "production.toml").write_text(text_)
    return load_environment_file(tmp_path / "production.toml")


def seeded(tree: Path, database_url: str, tmp_path: Path, profile: str = "production") -> None:
    """The database migrated to `tree`'s head and seeded by that release."""
    checkout = Checkout(tree, database_url, tmp_path / "seed-data")
    checkout.upgrade()
    checkout.seed(profile)


def fingerprint(db: Database) -> dict[str, object]:
    inspector = inspect(db.engine)
    tables = sorted(inspector.get_table_names())
    return {
        "revision": db.revision(),
        "tables": tables,
        "columns": {t: sorted(c["name"] for c in inspector.get_columns(t)) for t in tables},
        "indexes": {t: sorted(str(i["name"]) for i in inspector.get_indexes(t)) for t in tables},
    }


def test_a_v1_database_seen_by_v2_v4_and_itself(trees: dict[str, Path], database_url: str, tmp_path: Path) -> None:
    seeded(trees["v1"], database_url, tmp_path)
    config = environment(tmp_path, database_url, trees["v2"])
    app_env = resolve_app_environment(config)
    assert database_revision(database_url) == "0001"
    status = migration_status(config, app_env, trees["v2"], "0001")
    assert status == MigrationStatus(heads=["0002"], current="0001", pending=[SALARY], known=True)
    assert status.describe() == "Pending: 0002 (Salary range on jobs, and an index on jobs.company.)"
    ahead = migration_status(config, app_env, trees["v4"], "0001")
    assert [p.revision for p in ahead.pending] == ["0002", "0003", "0004"]
    assert all(p.has_downgrade for p in ahead.pending)
    same = migration_status(config, app_env, trees["v1"], "0001")
    assert same.pending == [] and same.describe() == "No pending migrations"
    fresh = migration_status(config, app_env, trees["v2"], None)
    assert fresh.current is None and [p.revision for p in fresh.pending] == ["0001", "0002"]


def test_a_revision_the_release_does_not_know(trees: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobapp.db'}"
    seeded(trees["v4"], url, tmp_path, profile="staging")
    config = environment(tmp_path, url, trees["v2"])
    status = migration_status(config, resolve_app_environment(config), trees["v2"], "0004")
    assert not status.known and status.pending == []
    assert status.describe() == "the database is at 0004, which this release's scripts do not know"
    with pytest.raises(MigrationFailed) as caught:
        check_migrations.fn(config, trees["v2"])
    assert str(caught.value) == ("check migrations: the database is at 0004, which this release's scripts do not "
                                 "know. the database is ahead of this release: deploy a newer one or roll back by hand")


def test_upgrade_to_head_and_downgrade_back_keep_the_data(
    trees: dict[str, Path], database_url: str, database: Database, tmp_path: Path
) -> None:
    seeded(trees["v1"], database_url, tmp_path)
    config = environment(tmp_path, database_url, trees["v2"])
    app_env = resolve_app_environment(config)
    before = fingerprint(database)
    assert upgrade(config, app_env, trees["v2"], "deploy-test") >= 0
    assert database_revision(database_url) == "0002"
    assert {"salary_min", "salary_max"} <= database.columns("jobs")
    assert "ix_jobs_company" in database.indexes("jobs")
    assert downgrade(config, app_env, trees["v2"], "0001", "deploy-test") >= 0
    assert database_revision(database_url) == "0001"
    assert fingerprint(database) == before
    assert database.counts() == PRODUCTION_COUNTS


def test_run_migrations_upgrades_the_workspace_release(trees: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobapp.db'}"
    seeded(trees["v2"], url, tmp_path, profile="staging")
    config = environment(tmp_path, url, trees["v4"])
    assert check_migrations.fn(config, trees["v4"]).describe().startswith("Pending: 0003 (Canonical URL")
    summary = run_migrations.fn(config, "deploy-test")
    assert summary.startswith("database at 0004 after ")
    assert database_revision(url) == "0004"


def test_v3_fails_on_production_data_with_the_cause_and_no_password(
    trees: dict[str, Path], database_url: str, database: Database, tmp_path: Path
) -> None:
    seeded(trees["v2"], database_url, tmp_path)
    config = environment(tmp_path, database_url, trees["v3"])
    with pytest.raises(MigrationFailed) as caught:
        upgrade(config, resolve_app_environment(config), trees["v3"], "deploy-test")
    error = caught.value
    assert error.step == "run migrations"
    # The exception line, not the footnote SQLAlchemy prints after it.
    assert error.cause.startswith("alembic upgrade failed: sqlalchemy.exc.IntegrityError: ")
    assert ("UNIQUE constraint failed: jobs.canonical_url" in error.cause
            or 'could not create unique index "ux_jobs_canonical_url"' in error.cause)
    assert "sqlalche.me" not in error.cause
    assert PASSWORD not in str(error)
    assert error.action == "the release's migration must be fixed; production is rolled back automatically"
    assert database.revision() == "0002" and database.counts() == PRODUCTION_COUNTS


def test_the_rehearsal_stops_v3_on_production_data_and_leaves_the_database_alone(
    trees: dict[str, Path], database_url: str, database: Database, tmp_path: Path
) -> None:
    seeded(trees["v2"], database_url, tmp_path)
    config = environment(tmp_path, database_url, trees["v3"])
    before = fingerprint(database)
    with pytest.raises(PreflightError) as caught:
        rehearse.fn(config, trees["v3"], tmp_path / "rehearsal", check_migrations.fn(config, trees["v3"]))
    error = caught.value
    assert error.step == "test migrations"
    assert error.cause.startswith("on a copy of production's data, alembic upgrade failed: "
                                  "sqlalchemy.exc.IntegrityError: ")
    assert error.action == "fix the migration in the release; production was not touched"
    assert PASSWORD not in str(error)
    assert fingerprint(database) == before  # SQLite would keep canonical_url after a failed 0003
    assert database.counts() == PRODUCTION_COUNTS
    assert list((tmp_path / "rehearsal").iterdir()) == []
    if database.engine.dialect.name == "postgresql":
        name = make_url(database_url).database
        with database.engine.connect() as conn:
            left = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                                {"p": f"{name}_rehearsal_%"}).scalars().all()
        assert left == []


def test_the_rehearsal_passes_v2_and_leaves_the_database_alone(
    trees: dict[str, Path], database_url: str, database: Database, tmp_path: Path
) -> None:
    seeded(trees["v1"], database_url, tmp_path)
    config = environment(tmp_path, database_url, trees["v2"])
    before = fingerprint(database)
    summary = rehearse.fn(config, trees["v2"], tmp_path / "rehearsal", check_migrations.fn(config, trees["v2"]))
    assert summary.detail == ("upgrade, downgrade, upgrade passed on a copy of production's database: "
                              "Pending: 0002 (Salary range on jobs, and an index on jobs.company.)")
    [measured] = summary.measures
    assert measured.revision == "0002" and measured.seconds > 0
    assert fingerprint(database) == before and before["revision"] == "0001"
    assert database.counts() == PRODUCTION_COUNTS


def test_the_rehearsal_with_nothing_pending(trees: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobapp.db'}"
    seeded(trees["v2"], url, tmp_path, profile="staging")
    config = environment(tmp_path, url, trees["v2"])
    status = check_migrations.fn(config, trees["v2"])
    nothing = rehearse.fn(config, trees["v2"], tmp_path / "rehearsal", status)
    assert nothing.describe() == "No pending migrations; nothing to rehearse" and nothing.measures == []


def test_database_revision_of_fresh_missing_and_broken_databases(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    create_engine(f"sqlite:///{empty}").connect().close()
    assert database_revision(f"sqlite:///{empty}") is None
    missing = tmp_path / "nowhere" / "missing.db"
    with pytest.raises(MigrationFailed) as caught:
        database_revision(f"sqlite:///{missing}")
    assert caught.value.step == "check migrations"
    assert caught.value.cause.startswith("cannot read the database revision (OperationalError: ")
    assert "database.url" in caught.value.action
    assert not missing.exists()  # reading never creates the database
    two = tmp_path / "two.db"
    engine = create_engine(f"sqlite:///{two}", poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0002a'), ('0002b')"))
    with pytest.raises(MigrationFailed, match=r"the database has 2 alembic heads \(0002a, 0002b\)"):
        database_revision(f"sqlite:///{two}")


@pytest.mark.parametrize("folder", ["state #2", "plain"])
def test_database_revision_where_the_path_has_uri_characters(tmp_path: Path, folder: str) -> None:
    # In a file: URI "#" starts a fragment: unquoted, mode=ro is lost and another, empty file is read.
    path = tmp_path / folder / "app.db"
    path.parent.mkdir()
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(path), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0002')"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert database_revision(f"sqlite:///{path}") == "0002"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no stray database was created
    with pytest.raises(MigrationFailed, match="cannot read the database revision"):
        database_revision(f"sqlite:///{tmp_path / folder / 'other.db'}")


def test_database_revision_of_a_wal_database(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0003')"))
    assert database_revision(f"sqlite:///{path}") == "0003"
    # While another process holds it open, with its -wal and -shm files in place.
    with engine.connect() as held:
        held.execute(text("SELECT 1"))
        assert database_revision(f"sqlite:///{path}") == "0003"


def test_database_revision_of_postgresql(postgres_database: str) -> None:
    assert database_revision(postgres_database) is None
    engine = create_engine(postgres_database, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0002')"))
    assert database_revision(postgres_database) == "0002"
    (port,) = free_ports(1)
    with pytest.raises(MigrationFailed, match="cannot read the database revision"):
        database_revision(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/nothing")


ENV_PY = env_py("JOBAPP_DATABASE_URL")


def alembic_tree(root: Path, revisions: dict[str, tuple[str | None, str, str]]) -> Path:
    return alembic_project(root, revisions, ENV_PY)


def table(name: str) -> str:
    return f'op.execute("CREATE TABLE {name} (id INTEGER PRIMARY KEY)")'


def drop(name: str) -> str:
    return f'def downgrade():\n    op.execute("DROP TABLE {name}")\n'


def test_which_revisions_count_as_having_a_downgrade(tmp_path: Path) -> None:
    tree = alembic_tree(tmp_path / "app", {
        "0001": (None, table("a"), drop("a")),
        "0002": ("0001", table("b"), "def downgrade():\n    pass\n"),
        "0003": ("0002", table("c"), 'def downgrade():\n    """Irreversible: c feeds the billing export."""\n'),
        "0004": ("0003", table("d"), "def downgrade():\n    raise NotImplementedError('one way')\n"),
        "0005": ("0004", table("e"), "def downgrade():\n    ...\n"),
        "0006": ("0005", table("f"), "# no downgrade at all\n"),
        "0007": ("0006", table("g"), 'def downgrade():\n    """Drop g."""\n    op.execute("DROP TABLE g")\n'),
    })
    url = f"sqlite:///{tmp_path / 'app.db'}"
    config = environment(tmp_path, url, tree)
    status = migration_status(config, resolve_app_environment(config), tree, None)
    assert [(p.revision, p.has_downgrade) for p in status.pending] == [
        ("0001", True), ("0002", False), ("0003", False), ("0004", False), ("0005", False), ("0006", False),
        ("0007", True)]
    assert status.pending[0].message == "Step 0001."


def test_a_rehearsal_of_a_one_way_migration_upgrades_only(tmp_path: Path) -> None:
    tree = alembic_tree(tmp_path / "app", {
        "0001": (None, table("a"), drop("a")),
        "0002": ("0001", table("b"), "def downgrade():\n    pass\n"),
    })
    url = f"sqlite:///{tmp_path / 'app.db'}"
    config = environment(tmp_path, url, tree)
    upgrade(config, resolve_app_environment(config), tree, "deploy-test", to="0001")
    summary = rehearse.fn(config, tree, tmp_path / "rehearsal", check_migrations.fn(config, tree))
    assert summary.detail == ("upgrade (no downgrade in 0002) passed on a copy of production's database: "
                              "Pending: 0002 (Step 0002.)")
    assert [m.revision for m in summary.measures] == ["0002"]
    assert database_revision(url) == "0001"


def test_a_release_with_two_heads_is_refused(tmp_path: Path) -> None:
    tree = alembic_tree(tmp_path / "app", {
        "0001": (None, table("a"), drop("a")),
        "0002a": ("0001", table("b"), drop("b")),
        "0002b": ("0001", table("c"), drop("c")),
    })
    url = f"sqlite:///{tmp_path / 'app.db'}"
    config = environment(tmp_path, url, tree)
    upgrade(config, resolve_app_environment(config), tree, "deploy-test", to="0001")
    with pytest.raises(MigrationFailed) as caught:
        check_migrations.fn(config, tree)
    assert caught.value.cause.startswith("the release has 2 migration heads (")
    assert {"0002a", "0002b"} <= set(caught.value.cause.replace(")", "").replace("(", "").replace(",", "").split())
    assert caught.value.action == "merge the heads (alembic merge) and release again"


def test_a_migration_that_fails_outside_sqlalchemy_is_reported_by_its_exception(tmp_path: Path) -> None:
    tree = alembic_tree(tmp_path / "app", {
        "0001": (None, "raise RuntimeError('jobs.company has NULLs; backfill first')", drop("a")),
    })
    config = environment(tmp_path, f"sqlite:///{tmp_path / 'app.db'}", tree)
    with pytest.raises(MigrationFailed) as caught:
        upgrade(config, resolve_app_environment(config), tree, "deploy-test")
    assert caught.value.cause == "alembic upgrade failed: RuntimeError: jobs.company has NULLs; backfill first"


def test_the_apps_sessions_carry_the_name_and_the_bounded_waits(tmp_path: Path, postgres_database: str) -> None:
    # PGAPPNAME and PGOPTIONS reach the app's own engine through libpq, with no change to its env.py.
    record = ('op.execute("CREATE TABLE seen AS SELECT current_setting(\'application_name\') AS app, '
              "current_setting('lock_timeout') AS lock_timeout, "
              "current_setting('statement_timeout') AS statement_timeout\")")
    tree = alembic_tree(tmp_path / "app", {"0001": (None, record, drop("seen"))})
    config = environment(tmp_path, postgres_database, tree,
                         database_settings="\nlock_timeout_ms = 1234\nstatement_timeout_ms = 45000")
    upgrade(config, resolve_app_environment(config), tree, "deploy-0f3a9c1e")
    engine = create_engine(postgres_database, poolclass=NullPool)
    with engine.connect() as conn:
        seen = conn.execute(text("SELECT app, lock_timeout, statement_timeout FROM seen")).one()
    assert tuple(seen) == ("deploy-0f3a9c1e", "1234ms", "45s")


@pytest.mark.parametrize("app_timeout", ["", "op.execute('SET lock_timeout = 0'); "],
                         ids=["bounded-by-lock-timeout", "app-turns-its-timeout-off"])
def test_a_migration_waiting_on_a_lock_ends_within_the_bound_naming_the_holder(
        tmp_path: Path, postgres_database: str, app_timeout: str, caplog: pytest.LogCaptureFixture) -> None:
    """Another session holds a lock on the table the migration alters: the wait is said in the log at
    once with the holder, and ends at the bound (the app's own `SET lock_timeout = 0` included)."""
    import logging
    import time

    engine = create_engine(postgres_database, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY)"))
    tree = alembic_tree(tmp_path / "app", {
        "0001": (None, app_timeout + 'op.execute("ALTER TABLE accounts ADD COLUMN note TEXT")',
                 'def downgrade():\n    op.execute("ALTER TABLE accounts DROP COLUMN note")\n')})
    config = environment(tmp_path, postgres_database, tree, database_settings="\nlock_timeout_ms = 1500")
    caplog.set_level(logging.WARNING, logger="deploy")
    holder_engine = create_engine(postgres_database, poolclass=NullPool,
                                  connect_args={"application_name": "nightly-report"})
    with holder_engine.connect() as holder:
        holder.execute(text("SELECT count(*) FROM accounts"))  # ACCESS SHARE, held until the transaction ends
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        started = time.monotonic()
        with pytest.raises(MigrationFailed) as caught:
            upgrade(config, resolve_app_environment(config), tree, "deploy-0f3a9c1e")
        waited = time.monotonic() - started
        holder.rollback()
    holder_engine.dispose()
    cause = caught.value.cause
    assert cause.startswith("alembic upgrade gave up waiting for a lock on accounts held by session "
                            f"{holder_pid} (nightly-report"), cause
    assert caught.value.action == "end that session or wait for it to finish, then run again"
    assert waited < 30, f"bound 1.5 s, waited {waited:.0f} s"
    said = [r.getMessage() for r in caplog.records if "is waiting for" in r.getMessage()]
    assert said and f"session {holder_pid} (nightly-report" in said[0]
    assert database_revision(postgres_database) is None, "the migration changed nothing"
    engine.dispose()
