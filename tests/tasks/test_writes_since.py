"""What restoring a backup would discard, measured against real backups of real SQLite and PostgreSQL
databases: rows inserted, updated and deleted since, per table, matched by key; a table the backup does
not have; nothing at all; and a backup that cannot be read, which is "unknown", never "nothing"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tasks.backups import take_backup
from tasks.writes_since import TableWrites, WrittenSince, writes_since


def make_schema(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0002')"))
        conn.execute(text("CREATE TABLE applications (id INTEGER PRIMARY KEY, status VARCHAR(20))"))
        conn.execute(text("CREATE TABLE outbox (id INTEGER PRIMARY KEY, body TEXT)"))
        conn.execute(text("CREATE TABLE events (kind TEXT)"))  # no key at all
        for i in range(20):
            conn.execute(text("INSERT INTO applications VALUES (:i, 'new')"), {"i": i})
            conn.execute(text("INSERT INTO outbox VALUES (:i, 'mail')"), {"i": i})
        conn.execute(text("INSERT INTO events VALUES ('seen'), ('seen'), ('clicked')"))
    engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


@pytest.fixture
def database(empty_database: str) -> str:
    make_schema(empty_database)
    return empty_database


def measured(url: str, tmp_path: Path) -> WrittenSince:
    return writes_since(url, tmp_path / "backups", "pre-deployment-20261204-071200", workdir=tmp_path / "work")


def backed_up(url: str, tmp_path: Path) -> None:
    take_backup(url, tmp_path / "backups", "pre-deployment-20261204-071200", revision="0002", git_sha=None, run_id=None)


def test_nothing_written_since_the_backup_loses_nothing(database: str, tmp_path: Path) -> None:
    backed_up(database, tmp_path)
    written = measured(database, tmp_path)
    assert not written.loses_data and written.rows == 0
    assert written.describe().startswith("nothing was written since backup pre-deployment-20261204-071200 (")
    assert written.describe().endswith("): restoring it loses nothing")


def test_rows_written_since_are_counted_per_table_and_kind(database: str, tmp_path: Path) -> None:
    backed_up(database, tmp_path)
    execute(database,
            "INSERT INTO applications VALUES (100, 'new'), (101, 'new')",
            "UPDATE applications SET status = 'hired' WHERE id IN (1, 2, 3)",
            "DELETE FROM outbox WHERE id < 5",
            "INSERT INTO events VALUES ('clicked')",
            # what the failed release did: a value in a column the backup lacks is a write since (one
            # its default filled in is not), and a table it created holds rows a restore would drop
            "ALTER TABLE applications ADD COLUMN score INTEGER",
            "UPDATE applications SET score = 1 WHERE id IN (1, 4)",
            "ALTER TABLE applications ADD COLUMN source VARCHAR(20) NOT NULL DEFAULT 'web'",
            "CREATE TABLE job_tags (id INTEGER PRIMARY KEY, tag TEXT)",
            "INSERT INTO job_tags VALUES (1, 'python')")
    written = measured(database, tmp_path)
    assert written.tables == [TableWrites("applications", inserted=2, updated=4),
                              TableWrites("events", inserted=1), TableWrites("job_tags", inserted=1),
                              TableWrites("outbox", deleted=5)]
    assert written.loses_data and written.rows == 13
    text_ = written.describe()
    assert text_.startswith("restoring backup pre-deployment-20261204-071200 would discard 13 rows written since ")
    assert text_.endswith(": applications (2 inserted, 4 updated); events (1 inserted); job_tags (1 inserted); "
                          "outbox (5 deleted)")


def test_a_backup_that_cannot_be_read_is_unknown_and_counts_as_a_loss(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    make_schema(url)
    backed_up(url, tmp_path)
    backup = tmp_path / "backups" / "pre-deployment-20261204-071200"
    (backup / "database.sqlite3").write_bytes(b"not a database")
    written = measured(url, tmp_path)
    assert written.unknown and written.loses_data
    assert "is unknown (" in written.describe() and written.describe().endswith("restoring it may discard data")
    shutil.rmtree(backup)
