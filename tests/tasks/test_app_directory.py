"""An app in a subdirectory of its repository (a monorepo's `backend/`): every app command, the
migrations, the tests and the scan run there, in the workspace and in a scratch tree of the release."""

from __future__ import annotations

import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import ConfigError
from tasks.app_commands import app_command, expand_argv
from tasks.migrations import check_migrations
from tasks.migrations import test_migrations as rehearse
from tasks.processes import Command, child_env
from tasks.quality import run_release_tests

PROJECT = Path(__file__).resolve().parents[2]
PYTHON = PROJECT / ".venv" / "bin" / "python"

# script_location is relative, as `alembic init` writes it: it resolves from where alembic runs.
ALEMBIC_INI = "[alembic]\nscript_location = migrations\n"
ENV_PY = """\
import os

from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""
REVISION = '''"""Items."""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")


def downgrade():
    op.execute("DROP TABLE items")
'''


@pytest.fixture
def monorepo(tmp_path: Path) -> Path:
    return make_monorepo(tmp_path / "repo")


def make_monorepo(root: Path) -> Path:
    """A repository whose root holds a frontend; the Python app and its migrations in backend/."""
    (root / "frontend").mkdir(parents=True)
    (root / "frontend" / "package.json").write_text("{}\n")
    backend = root / "backend"
    (backend / "migrations" / "versions").mkdir(parents=True)
    (backend / "alembic.ini").write_text(ALEMBIC_INI)
    (backend / "migrations" / "env.py").write_text(ENV_PY)
    (backend / "migrations" / "versions" / "0001_items.py").write_text(REVISION)
    (backend / "app.py").write_text("print('the app')\n")
    subprocess.run(["git", "init", "--quiet", str(root)], check=True)
    return root


def environment(tmp_path: Path, workspace: Path, app_directory: str = "backend", test_command: str = "[]") -> EnvironmentConfig:
    (tmp_path / "app.env").write_text(f"APP_DATABASE_URL=sqlite:///{tmp_path / 'live.db'}\n")
    (tmp_path / "production.toml").write_text(textwrap.dedent(f"""\
        name = "production"
        env_files = ["app.env"]
        state_dir = "state"
        [source]
        repository = "origin.git"
        workspace = "{workspace}"
        app_directory = "{app_directory}"
        [service]
        base_url = "http://127.0.0.1:9"
        python = "{PYTHON}"
        start_command = ["{{python}}", "app.py"]
        pid_file = "run/app.pid"
        startup_log = "logs/app.log"
        [database]
        url = {{ env = "APP_DATABASE_URL" }}
        [backups]
        directory = "backups"
        [prerequisites]
        test_command = {test_command}
        """))
    return load_environment_file(tmp_path / "production.toml")


@pytest.mark.parametrize("app_directory", ["/srv/backend", "../elsewhere", "backend/../../x"])
def test_the_app_directory_stays_inside_the_repository(tmp_path: Path, app_directory: str) -> None:
    with pytest.raises(ConfigError, match="source.app_directory: .*a path inside the repository"):
        environment(tmp_path, tmp_path, app_directory)


def test_the_app_directory_defaults_to_the_repository_root(tmp_path: Path) -> None:
    config = environment(tmp_path, tmp_path / "repo", ".")
    assert config.app_dir() == tmp_path / "repo" / "."
    assert config.app_dir().resolve() == (tmp_path / "repo").resolve()


def test_app_commands_run_in_the_app_directory(tmp_path: Path, monorepo: Path) -> None:
    config = environment(tmp_path, monorepo)
    assert app_command(config, config.service.start_command, {"A": "1"}) == Command(
        (str(PYTHON), "app.py"), cwd=monorepo / "backend", env=child_env({"A": "1"}), timeout=60.0)
    scratch = tmp_path / "worktree"
    assert expand_argv(["{workspace}", "{app}"], config, scratch) == [str(scratch), str(scratch / "backend")]


def test_migrations_are_found_and_rehearsed_in_the_app_directory(tmp_path: Path, monorepo: Path) -> None:
    """Run from the repository root, alembic would say "Path doesn't exist: migrations"."""
    live = create_engine(f"sqlite:///{tmp_path / 'live.db'}", poolclass=NullPool)
    with live.begin() as conn:
        conn.execute(text("CREATE TABLE jobs (id INTEGER PRIMARY KEY)"))
    config = environment(tmp_path, tmp_path / "elsewhere")  # the workspace is not what the release is read from
    status = check_migrations.fn(config, monorepo)
    assert [p.revision for p in status.pending] == ["0001"] and status.heads == ["0001"]
    summary = rehearse.fn(config, monorepo, tmp_path / "rehearsal", status)
    assert summary.detail == "upgrade, downgrade, upgrade passed on a copy of production's database: Pending: 0001 (Items.)"
    with live.connect() as conn:
        assert conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars().all() == ["jobs"]
    live.dispose()


def test_the_release_tests_run_in_the_app_directory(tmp_path: Path, monorepo: Path) -> None:
    command = '["{python}", "-c", "import os; print(\'ran in\', os.getcwd())"]'
    config = environment(tmp_path, tmp_path / "elsewhere", test_command=command)
    sqlite3.connect(tmp_path / "live.db").close()  # the live database, whose schema the tests must leave alone
    assert run_release_tests.fn(config, monorepo) == f"ran in {monorepo / 'backend'}"
