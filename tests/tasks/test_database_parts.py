"""An app that builds its connection from parts (host, port, user, password, name), and the rehearsal
that must never reach the live database, however the environment file is written.

The apps here are minimal Alembic projects whose env.py reads the variables a real app of that shape
reads; the databases are real SQLite files and, where marked, real PostgreSQL databases."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import ConfigError, LiveDatabaseTouched, PreflightError
from deployments.secrets import MASK, database_env, redact, resolve_app_environment
from tasks.migrations import check_migrations, live_database_elsewhere
from tasks.migrations import test_migrations as rehearse

PROJECT = Path(__file__).resolve().parents[2]
PYTHON = PROJECT / ".venv" / "bin" / "python"
URL_SOURCE = "TASKS_TEST_PARTS_DATABASE_URL"
PASSWORD = "s3cret-Parts-pw"

# The shape of a common FastAPI + SQLModel app: five variables, assembled into a URL in its settings.
FIVE_PARTS_ENV_PY = """\
import os

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL

url = URL.create("postgresql+psycopg", username=os.environ["POSTGRES_USER"], password=os.environ["POSTGRES_PASSWORD"],
                 host=os.environ["POSTGRES_SERVER"], port=int(os.environ["POSTGRES_PORT"]),
                 database=os.environ["POSTGRES_DB"])
"""
# An app whose database is a file named by one variable, relative to where it runs.
FILE_ENV_PY = """\
import os

from alembic import context
from sqlalchemy import create_engine, pool

url = "sqlite:///" + os.environ["APP_DB_FILE"]
"""
# An app that ignores what it is given and reads its database from a file of its own.
STUBBORN_ENV_PY = """\
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool

url = Path(__file__).resolve().parent.joinpath("live-url.txt").read_text().strip()
"""
MIGRATE = """
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""
REVISIONS = {
    "0001": (None, 'op.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")', 'op.execute("DROP TABLE items")'),
    "0002": ("0001", 'op.execute("ALTER TABLE items ADD COLUMN title VARCHAR(80)")',
             'op.execute("ALTER TABLE items DROP COLUMN title")'),
}


def app(root: Path, env_py: str) -> Path:
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (root / "migrations" / "env.py").write_text(env_py + MIGRATE)
    for revision, (down, up, undo) in REVISIONS.items():
        (versions / f"{revision}_step.py").write_text(
            f'"""Step {revision}."""\n\nfrom alembic import op\n\nrevision = {revision!r}\ndown_revision = {down!r}\n'
            f"branch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n    {up}\n\n\ndef downgrade():\n    {undo}\n")
    return root


def environment(tmp_path: Path, url: str, workspace: Path, database: str, service_env: str = "",
                secrets: str = "", env_file: str = "") -> EnvironmentConfig:
    (tmp_path / "app.env").write_text(f"{URL_SOURCE}={url}\n{env_file}")
    (tmp_path / "production.toml").write_text(textwrap.dedent(f"""\
        name = "production"
        env_files = ["app.env"]
        state_dir = "state"
        [source]
        repository = "origin.git"
        workspace = "{workspace}"
        [service]
        base_url = "http://127.0.0.1:9"
        python = "{PYTHON}"
        start_command = ["{PYTHON}", "-c", "pass"]
        pid_file = "run/app.pid"
        startup_log = "logs/app.log"
        [service.env]
        APP_ENV = "production"
        {service_env}
        [service.secrets]
        {secrets}
        [database]
        url = {{ env = "{URL_SOURCE}" }}
        {database}
        [backups]
        directory = "backups"
        """))
    return load_environment_file(tmp_path / "production.toml")


def at_0001(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
        conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO items (id) VALUES (1), (2), (3)"))
    engine.dispose()


def shape(url: str) -> tuple[str, list[str], int]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        columns = sorted(c["name"] for c in inspect(conn).get_columns("items"))
        rows = conn.execute(text("SELECT count(*) FROM items")).scalar_one()
    engine.dispose()
    return revision, columns, rows


def rehearsal(config: EnvironmentConfig, tmp_path: Path) -> str:
    tree = config.source.workspace
    return rehearse.fn(config, tree, tmp_path / "rehearsal", check_migrations.fn(config, tree)).detail


# --- the variables, from the URL --------------------------------------------------------------------------

PG_URL = f"postgresql://app:{PASSWORD}@db.internal:6432/jobs"


@pytest.mark.parametrize(("url", "mapping", "expected"), [
    (PG_URL, {"POSTGRES_SERVER": "host", "POSTGRES_PORT": "port", "POSTGRES_USER": "user",
              "POSTGRES_PASSWORD": "password", "POSTGRES_DB": "name"},
     {"POSTGRES_SERVER": "db.internal", "POSTGRES_PORT": "6432", "POSTGRES_USER": "app",
      "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "jobs"}),
    ("postgresql://app@db.internal/jobs", {"PGPORT": "port", "PGDATABASE": "name", "DSN": "url"},
     {"PGPORT": "5432", "PGDATABASE": "jobs", "DSN": "postgresql://app@db.internal/jobs"}),
    ("sqlite:////srv/app/var/app.db", {"APP_DB_FILE": "name", "APP_DB_HOST": "host"},
     {"APP_DB_FILE": "/srv/app/var/app.db", "APP_DB_HOST": ""}),
    ("sqlite:////srv/app/var/app.db", {}, {"DATABASE_URL": "sqlite:////srv/app/var/app.db"}),
], ids=["five parts of a PostgreSQL URL", "the default port, and the whole URL beside parts",
        "a SQLite file by name", "one URL variable, the default"])
def test_each_variable_gets_its_part_of_the_url(tmp_path: Path, url: str, mapping: dict[str, str],
                                                expected: dict[str, str]) -> None:
    lines = "\n".join(f'{name} = "{part}"' for name, part in mapping.items())
    config = environment(tmp_path, url, tmp_path, "[database.app_variables]\n" + lines if mapping else "")
    assert database_env(config, url) == expected
    assert resolve_app_environment(config) == {"APP_ENV": "production", **expected}


def test_a_password_given_alone_is_masked_alone(tmp_path: Path) -> None:
    config = environment(tmp_path, PG_URL, tmp_path, '[database.app_variables]\nDB_PASSWORD = "password"\n'
                                                     'DB_NAME = "name"')
    resolve_app_environment(config)
    assert redact(f"connecting with {PASSWORD}") == f"connecting with {MASK}"


@pytest.mark.parametrize(("database", "service_env", "message"), [
    ('[database.app_variables]\nPOSTGRES_SERVER = "host"\nPOSTGRES_PASSWORD = "password"', "",
     'map a variable to "name" (the database\'s name) or to "url"'),
    ('[database.app_variables]\n"2DB" = "name"', "", "not environment variable names: 2DB"),
    ('[database.app_variables]\nPOSTGRES_DB = "name"\nPOSTGRES_SERVER = "host"', 'POSTGRES_SERVER = "db.internal"',
     "POSTGRES_SERVER (in [service.env]) also given by [database]"),
    ('app_variable = "DATABASE_URL"', 'DATABASE_URL = "sqlite:///elsewhere.db"',
     "DATABASE_URL (in [service.env]) also given by [database]"),
    ('[database.app_variables]\nPOSTGRES_DB = "dbname"', "", "POSTGRES_DB"),
], ids=["parts that cannot name the database", "a name that is not a variable",
        "a part also set by hand", "the URL variable also set by hand", "a part that does not exist"])
def test_a_mapping_that_cannot_work_is_refused_when_the_file_loads(tmp_path: Path, database: str, service_env: str,
                                                                  message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        environment(tmp_path, PG_URL, tmp_path, database, service_env=service_env)
    assert message in str(caught.value)


# --- variables that would lead the rehearsal to production -------------------------------------------------


@pytest.mark.parametrize(("service_env", "secrets", "found"), [
    ('POSTGRES_SERVER = "db.internal"\nPOSTGRES_DB = "jobs"', "",
     ["POSTGRES_DB ([service.env], the live database's name)"]),
    ("", 'POSTGRES_PASSWORD = { env = "PW" }', ["POSTGRES_PASSWORD ([service.secrets], the live database's password)"]),
    ('READ_REPLICA = "postgresql+psycopg://reader@db.internal:6432/jobs"', "",
     ["READ_REPLICA ([service.env], a URL of the live database)"]),
    ('APP_NAME = "jobs"\nOTHER_DB = "postgresql://app@db.internal:6432/analytics"', "", []),
], ids=["its name in a database variable", "its password as a secret", "another URL of it",
        "the same word as an app name, and another database"])
def test_variables_outside_database_that_lead_to_the_live_database(
        tmp_path: Path, service_env: str, secrets: str, found: list[str]) -> None:
    config = environment(tmp_path, PG_URL, tmp_path, '[database.app_variables]\nDATABASE_URL = "url"',
                         service_env=service_env, secrets=secrets, env_file=f"PW={PASSWORD}\n")
    assert live_database_elsewhere(config, resolve_app_environment(config), PG_URL) == found


def test_the_obvious_file_for_a_file_database_is_refused_before_the_rehearsal_runs(tmp_path: Path) -> None:
    """The app reads APP_DB_FILE; the file sets it by hand in [service.env] and leaves app_variable at its
    default: the rehearsal would point DATABASE_URL at the copy and migrate the live file."""
    workspace = app(tmp_path / "app", FILE_ENV_PY)
    (workspace / "var").mkdir()
    live = f"sqlite:///{workspace / 'var' / 'live.db'}"
    at_0001(live)
    config = environment(tmp_path, live, workspace, "", service_env='APP_DB_FILE = "var/live.db"')
    with pytest.raises(PreflightError) as caught:
        rehearsal(config, tmp_path)
    assert caught.value.cause.startswith("the app would still reach the live database through "
                                         "APP_DB_FILE ([service.env], the live database's file)")
    assert "[database.app_variables]" in caught.value.action and "production was not touched" in caught.value.action
    assert shape(live) == ("0001", ["id"], 3)


def test_a_file_database_by_name_is_rehearsed_on_its_copy(tmp_path: Path) -> None:
    workspace = app(tmp_path / "app", FILE_ENV_PY)
    live = f"sqlite:///{tmp_path / 'live.db'}"
    at_0001(live)
    config = environment(tmp_path, live, workspace, '[database.app_variables]\nAPP_DB_FILE = "name"')
    assert rehearsal(config, tmp_path).startswith("upgrade, downgrade, upgrade passed on a copy of production's")
    assert shape(live) == ("0001", ["id"], 3)


def test_an_app_that_reaches_the_live_database_anyway_fails_loudly(tmp_path: Path) -> None:
    """No variable names it, so nothing can be refused beforehand; the guard after the rehearsal sees
    the live database moved and says so, as a failure that changed production."""
    workspace = app(tmp_path / "app", STUBBORN_ENV_PY)
    live = f"sqlite:///{tmp_path / 'live.db'}"
    at_0001(live)
    (workspace / "migrations" / "live-url.txt").write_text(live)
    config = environment(tmp_path, live, workspace, "")
    with pytest.raises(LiveDatabaseTouched) as caught:
        rehearsal(config, tmp_path)
    assert caught.value.cause.startswith("the rehearsal changed the LIVE database of production (revision 0002, "
                                         "expected 0001; schema fingerprint ")
    assert caught.value.changed_production is True
    assert shape(live) == ("0002", ["id", "title"], 3)  # what the guard reported is what happened


# --- the five-variable app on PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def live_url(postgres_database: str) -> str:
    url = make_url(postgres_database).set(password=PASSWORD).render_as_string(hide_password=False)
    at_0001(url)
    return url


FIVE = ('[database.app_variables]\nPOSTGRES_SERVER = "host"\nPOSTGRES_PORT = "port"\nPOSTGRES_USER = "user"\n'
        'POSTGRES_PASSWORD = "password"\nPOSTGRES_DB = "name"')


@pytest.mark.postgres
def test_five_variables_from_the_url_rehearse_on_the_copy_only(tmp_path: Path, live_url: str) -> None:
    workspace = app(tmp_path / "app", FIVE_PARTS_ENV_PY)
    config = environment(tmp_path, live_url, workspace, FIVE)
    assert rehearsal(config, tmp_path) == ("upgrade, downgrade, upgrade passed on a copy of production's database: "
                                           "Pending: 0002 (Step 0002.)")
    assert shape(live_url) == ("0001", ["id"], 3)


@pytest.mark.postgres
def test_five_variables_set_by_hand_are_refused_and_production_is_untouched(tmp_path: Path, live_url: str) -> None:
    """The obvious configuration of such an app: its five variables in [service.env] and [service.secrets],
    the tool's URL beside them. Before, the rehearsal ran upgrade, downgrade, upgrade on production."""
    live = make_url(live_url)
    workspace = app(tmp_path / "app", FIVE_PARTS_ENV_PY)
    config = environment(
        tmp_path, live_url, workspace, "",
        service_env=f'POSTGRES_SERVER = "{live.host}"\nPOSTGRES_PORT = "{live.port or 5432}"\n'
                    f'POSTGRES_USER = "{live.username}"\nPOSTGRES_DB = "{live.database}"',
        secrets='POSTGRES_PASSWORD = { env = "PW" }', env_file=f"PW={PASSWORD}\n")
    with pytest.raises(PreflightError) as caught:
        rehearsal(config, tmp_path)
    assert caught.value.cause.startswith(
        "the app would still reach the live database through POSTGRES_DB ([service.env], the live database's name); "
        "POSTGRES_PASSWORD ([service.secrets], the live database's password): ")
    assert PASSWORD not in str(caught.value)
    assert shape(live_url) == ("0001", ["id"], 3)
