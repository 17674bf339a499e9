"""A backup is what a restore proves, and no wait for somebody else's lock is silent or endless.

Real PostgreSQL: a damaged archive (its table of contents, its data) is never published as a backup;
a session holding a table lock makes the backup and the rehearsal's copy fail within the bound, with
the holder named in the error and in the log while it waits; nothing is left behind (no backup
directory, no scratch database, no session of ours).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from deployments.errors import BackupFailed
from tasks.backups import new_tag, restore_backup, scratch_copy, take_backup
from tests.tasks.test_backups import make_schema

pytestmark = pytest.mark.postgres


def corrupting_pg_dump(tmp_path: Path, python: str) -> Path:
    """A pg_dump that runs the real one and changes the archive on the way out with `python` (the
    schema-only dump the scratch copy's tables are made from is left whole: the archive is damaged)."""
    script = tmp_path / "pg_dump"
    script.write_text("#!/bin/sh\nset -e\ncase \"$*\" in *--section=pre-data*) exec pg_dump \"$@\";; esac\n"
                      "pg_dump \"$@\" | python3 -c '\nimport sys\n"
                      "data = bytearray(sys.stdin.buffer.read())\n" + python + "\nsys.stdout.buffer.write(data)'\n")
    script.chmod(0o755)
    return script


def scratch_databases(admin_url: str, of: str) -> list[str]:
    """The scratch databases made from the database at URL `of` (tests beside this one make theirs)."""
    source = make_url(of).database or ""
    engine = create_engine(admin_url)
    with engine.connect() as conn:
        names = [name for name in conn.execute(text("SELECT datname FROM pg_database")).scalars()
                 if name.startswith(source[:30] + "_verify_") or name.startswith(source[:30] + "_rehearsal_")]
    engine.dispose()
    return names


def our_sessions(admin_url: str, of: str) -> list[str]:
    """Sessions named deploy-... still connected to the database at URL `of`."""
    engine = create_engine(admin_url)
    with engine.connect() as conn:
        names = list(conn.execute(text("SELECT application_name FROM pg_stat_activity WHERE datname = :db "
                                       "AND application_name LIKE 'deploy-%'"), {"db": make_url(of).database}).scalars())
    engine.dispose()
    return names


@contextmanager
def table_locked(url: str, table: str = "jobs") -> Iterator[int]:
    """Another team's session: `BEGIN; LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE;` left open."""
    engine = create_engine(url, connect_args={"application_name": "reporting-job"})
    with engine.connect() as conn:
        conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        yield pid
        conn.rollback()
    engine.dispose()


def refused_backup(tmp_path: Path, database: str, admin_url: str, damage: str) -> str:
    """A backup through a pg_dump that damages its archive with `damage`: refused, nothing published,
    no scratch database left; the error's text."""
    tool = corrupting_pg_dump(tmp_path, damage)
    with pytest.raises(BackupFailed) as caught:
        take_backup(database, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None,
                    pg_dump=str(tool))
    assert list((tmp_path / "b").iterdir()) == [], "a backup that cannot be restored is never published"
    assert scratch_databases(admin_url, database) == []
    return str(caught.value)


def test_a_damaged_table_of_contents_is_never_published(tmp_path: Path, postgres_database: str,
                                                         postgres_admin_url: str) -> None:
    """`pg_restore -f /dev/null` accepts this archive; restoring it creates the wrong table."""
    make_schema(postgres_database)
    message = refused_backup(tmp_path, postgres_database, postgres_admin_url,
                             'i = data.index(b"CREATE TABLE public.jobs")\n'
                             'data[i + len("CREATE TABLE public.")] = ord("k")')
    assert message.startswith("verify backup:") and "do not deploy" in message, message


def test_damaged_data_is_never_published(tmp_path: Path, postgres_database: str, postgres_admin_url: str) -> None:
    """The table of contents is whole, a byte of the compressed table data is not."""
    make_schema(postgres_database, rows=3000)
    message = refused_backup(tmp_path, postgres_database, postgres_admin_url, "i = len(data) * 3 // 4\ndata[i] ^= 0xFF")
    assert message.startswith("verify backup:"), message


def test_the_manifest_says_a_restore_proved_it(tmp_path: Path, postgres_database: str) -> None:
    make_schema(postgres_database)
    manifest = take_backup(postgres_database, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None)
    assert "restore into a scratch database" in manifest.verified_by
    assert manifest.seconds["restore"] > 0 and len(manifest.fingerprint) == 64
    assert manifest.row_counts == {"alembic_version": 1, "jobs": 50}
    assert "restored into a scratch copy in" in manifest.describe()


SHAPES = """
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('0007');
CREATE TABLE accounts (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text UNIQUE NOT NULL);
CREATE TABLE events (id bigint, at date NOT NULL, account_id int REFERENCES accounts (id),
                     CHECK (id > 0)) PARTITION BY RANGE (at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE notes (body text);
CREATE TABLE pinned_notes (rank int) INHERITS (notes);
CREATE SCHEMA audit;
CREATE TABLE audit.trail (id serial PRIMARY KEY, what text);
CREATE INDEX ix_events_at ON events (at);
CREATE VIEW recent AS SELECT a.email, e.at FROM events e JOIN accounts a ON a.id = e.account_id;
INSERT INTO accounts (email) SELECT 'u' || i || '@example.org' FROM generate_series(1, 300) i;
INSERT INTO events SELECT i, DATE '2026-01-01' + mod(i, 300), 1 + mod(i, 300) FROM generate_series(1, 2000) i;
INSERT INTO notes VALUES ('a'), ('b');
INSERT INTO pinned_notes VALUES ('c', 1);
INSERT INTO audit.trail (what) SELECT 'x' FROM generate_series(1, 40);
"""


def test_tables_of_every_kind_are_proven_and_restored(tmp_path: Path, postgres_database: str,
                                                      postgres_admin_url: str) -> None:
    """Partitions, inheritance, identity columns, foreign keys, a second schema, a view: the scratch
    copy's tables are set unlogged (a partitioned parent cannot be, its partitions can), the archive
    is proven, and restoring it brings the rows back."""
    engine = create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(SHAPES)
    manifest = take_backup(postgres_database, tmp_path / "b", new_tag(), revision="0007", git_sha=None, run_id=None)
    assert manifest.row_counts["accounts"] == 300 and manifest.row_counts["events"] == 2000
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM events; DELETE FROM audit.trail; DROP VIEW recent")
    engine.dispose()
    restore_backup(postgres_database, tmp_path / "b", manifest.tag)
    engine = create_engine(postgres_database)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM recent")).scalar_one() == 2000
        assert conn.execute(text("SELECT count(*) FROM audit.trail")).scalar_one() == 40
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar_one() == 3
        assert conn.execute(text("SELECT relpersistence FROM pg_class WHERE relname = 'events_2026'")).scalar_one() == "p"
    engine.dispose()
    assert scratch_databases(postgres_admin_url, postgres_database) == []


def test_a_table_definition_damaged_in_the_archive_alone_fails_the_proof(
        tmp_path: Path, postgres_database: str, postgres_admin_url: str) -> None:
    """A column's type changed in the archive's table of contents only: the data still loads into the
    scratch copy's tables (made from the live schema), so the archive's schema restored alone must
    say so."""
    make_schema(postgres_database)
    message = refused_backup(tmp_path, postgres_database, postgres_admin_url,
                             'i = data.index(b"title character varying(")\n'
                             'data[i:i + 24] = b"title character(        "')
    assert message.startswith("verify backup:") and "its schema restored alone" in message, message


def test_a_table_lock_fails_the_backup_within_the_bound_naming_the_holder(
        tmp_path: Path, postgres_database: str, postgres_admin_url: str, caplog: pytest.LogCaptureFixture) -> None:
    make_schema(postgres_database)
    caplog.set_level(logging.WARNING, logger="deploy")
    with table_locked(postgres_database) as holder:
        started = time.monotonic()
        with pytest.raises(BackupFailed) as caught:
            take_backup(postgres_database, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None,
                        lock_timeout_ms=1500)
        waited = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith("backup database:"), message
    assert f"session {holder} (reporting-job" in message and "end that session" in message, message
    assert waited < 30, f"the bound is 1.5 s; the backup waited {waited:.0f} s"
    said = [r.getMessage() for r in caplog.records if "is waiting for" in r.getMessage()]
    assert said and f"session {holder}" in said[0], "the wait is in the log while it lasts"
    assert list((tmp_path / "b").iterdir()) == []
    assert scratch_databases(postgres_admin_url, postgres_database) == [] and our_sessions(postgres_admin_url, postgres_database) == []


def test_a_table_lock_fails_the_rehearsal_copy_naming_the_holder(tmp_path: Path, postgres_database: str,
                                                                  postgres_admin_url: str) -> None:
    make_schema(postgres_database)
    with table_locked(postgres_database) as holder, pytest.raises(BackupFailed) as caught:
        with scratch_copy(postgres_database, tmp_path, lock_timeout_ms=1500):
            pytest.fail("the copy cannot be complete while the table is locked")
    message = str(caught.value)
    assert message.startswith("test migrations:") and f"session {holder} (reporting-job" in message, message
    assert scratch_databases(postgres_admin_url, postgres_database) == [] and our_sessions(postgres_admin_url, postgres_database) == []


def test_the_rehearsal_copy_is_named_and_complete(tmp_path: Path, postgres_database: str,
                                                  postgres_admin_url: str) -> None:
    make_schema(postgres_database)
    with scratch_copy(postgres_database, tmp_path) as copy:
        engine = create_engine(copy)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 50
        engine.dispose()
    assert scratch_databases(postgres_admin_url, postgres_database) == []


def test_a_restore_ends_the_sessions_in_its_way(tmp_path: Path, postgres_database: str) -> None:
    """The app is in maintenance when a backup is restored: a session still holding a lock on a table
    would stall `--clean`'s DROP; it is ended, and the restore completes."""
    make_schema(postgres_database)
    manifest = take_backup(postgres_database, tmp_path / "b", new_tag(), revision="0002", git_sha=None, run_id=None)
    engine = create_engine(postgres_database, connect_args={"application_name": "stuck-worker"})
    conn = engine.connect()
    conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
    done = threading.Event()
    threading.Thread(target=lambda: (restore_backup(postgres_database, tmp_path / "b", manifest.tag), done.set()),
                     daemon=True).start()
    assert done.wait(60), "the restore did not complete while another session held a lock"
    with pytest.raises(Exception):
        conn.execute(text("SELECT 1"))  # its session was ended
    conn.close()
    engine.dispose()
