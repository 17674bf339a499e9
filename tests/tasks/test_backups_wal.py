"""SQLite in WAL mode, as the sandbox and most production SQLite run: a backup taken while another
connection holds writes that are committed but not yet checkpointed into the main file has them all,
and a restore under that open connection puts back exactly the backup, revision and rows."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tasks.backups import new_tag, restore_backup, take_backup

SEEDED, WRITTEN = 20, 30


def count(path: Path, query: str) -> object:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query).fetchone()[0]


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A WAL database at revision 0002 with SEEDED jobs in its main file and WRITTEN more only in its
    WAL, held there by a writer that never checkpoints and stays open."""
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0002')")
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, title VARCHAR(80))")
        conn.executemany("INSERT INTO jobs VALUES (?, ?)", [(i, f"job {i}") for i in range(SEEDED)])
        conn.commit()
    held = sqlite3.connect(path, check_same_thread=False)
    held.execute("PRAGMA wal_autocheckpoint=0")
    held.executemany("INSERT INTO jobs VALUES (?, ?)", [(i, f"job {i}") for i in range(SEEDED, SEEDED + WRITTEN)])
    held.commit()
    try:
        yield path, held
    finally:
        held.close()


def test_a_backup_has_the_uncheckpointed_writes_and_a_restore_puts_them_back(
        writer: tuple[Path, sqlite3.Connection], tmp_path: Path) -> None:
    path, held = writer
    main_file_only = tmp_path / "main-file-only.db"
    shutil.copyfile(path, main_file_only)
    assert (path.parent / "app.db-wal").stat().st_size > 0
    assert count(main_file_only, "SELECT count(*) FROM jobs") == SEEDED, "the writes are not only in the WAL"

    url, backups, tag = f"sqlite:///{path}", tmp_path / "backups", new_tag()
    manifest = take_backup(url, backups, tag, revision="0002", git_sha="a" * 40, run_id="run-wal")
    assert manifest.row_counts == {"alembic_version": 1, "jobs": SEEDED + WRITTEN}
    copy = backups / tag / manifest.file
    assert count(copy, "SELECT count(*) FROM jobs") == SEEDED + WRITTEN
    assert count(copy, "PRAGMA integrity_check") == "ok"

    # A failed migration, written through the connection that is still open.
    held.execute("DELETE FROM jobs WHERE id < 10")
    held.execute("UPDATE alembic_version SET version_num = '0003'")
    held.execute("CREATE TABLE half_migrated (id INTEGER)")
    held.commit()
    restore_backup(url, backups, tag)

    assert count(path, "SELECT count(*) FROM jobs") == SEEDED + WRITTEN
    assert count(path, "SELECT version_num FROM alembic_version") == "0002"
    assert count(path, "SELECT count(*) FROM sqlite_master WHERE name = 'half_migrated'") == 0
    assert count(path, "PRAGMA journal_mode") == "wal", "the restore left WAL mode"
    # The connection that was open all along reads the restored database, not a stale snapshot.
    assert held.execute("SELECT count(*) FROM jobs").fetchone()[0] == SEEDED + WRITTEN
    assert held.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0002"
