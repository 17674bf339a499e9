from __future__ import annotations

from collections.abc import Callable
from subprocess import CompletedProcess

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from jobapp.db import ALEMBIC_INI, expected_revision
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

RunModule = Callable[..., CompletedProcess[str]]
TABLES = {"jobs", "applications", "documents", "outbox", "user_sessions"}


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    names = set(inspect(engine).get_table_names()) - {"alembic_version"}
    engine.dispose()
    return names


def revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        found = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    return found


def test_revisions_form_one_numbered_line() -> None:
    scripts = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    assert len(scripts.get_heads()) == 1
    chain = [script.revision for script in scripts.walk_revisions("base", "heads")][::-1]
    assert chain == [f"{number:04d}" for number in range(1, len(chain) + 1)]
    assert chain[-1] == expected_revision()


def test_upgrade_downgrade_upgrade(database_url: str, make_alembic_config: Callable[[str], Config]) -> None:
    config = make_alembic_config(database_url)
    command.upgrade(config, "head")
    assert TABLES <= tables(database_url)
    assert revision(database_url) == expected_revision()
    command.downgrade(config, "base")
    assert tables(database_url) == set()
    command.upgrade(config, "head")
    assert TABLES <= tables(database_url)
    assert revision(database_url) == expected_revision()


def test_each_step_down_and_up_again(database_url: str, make_alembic_config: Callable[[str], Config]) -> None:
    config = make_alembic_config(database_url)
    command.upgrade(config, "head")
    scripts = ScriptDirectory.from_config(config)
    for script in scripts.walk_revisions("base", "heads"):
        previous = script.down_revision
        assert previous is None or isinstance(previous, str), "the history has no merges"
        command.downgrade(config, previous or "base")
        assert revision_or_none(database_url) == previous
    command.upgrade(config, "head")
    assert revision(database_url) == expected_revision()


def revision_or_none(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        exists = inspect(connection).has_table("alembic_version")
        found = (
            connection.execute(text("SELECT version_num FROM alembic_version")).scalar() if exists else None
        )
    engine.dispose()
    return found


def test_caller_owned_connection_is_used(
    database_url: str, make_alembic_config: Callable[[str], Config]
) -> None:
    config = make_alembic_config("sqlite:///this/path/must/not/be/used.db")
    engine = create_engine(database_url, poolclass=NullPool)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    engine.dispose()
    assert revision(database_url) == expected_revision()


def test_command_line_reads_the_database_url(database_url: str, run_module: RunModule) -> None:
    result = run_module("alembic", "upgrade", "head", env={"JOBAPP_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert revision(database_url) == expected_revision()
    current = run_module("alembic", "current", env={"JOBAPP_DATABASE_URL": database_url})
    assert f"{expected_revision()} (head)" in current.stdout
