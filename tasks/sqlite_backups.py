"""SQLite backups: a copy taken by the online backup API, checked page by page, and compared.

The copy runs inside a read transaction on the source that also reads the source's revision, schema
and row counts, so both describe one snapshot (a file copy of a WAL database can miss committed
pages). Then `PRAGMA quick_check` (or `integrity_check`, `[backups] sqlite_check`) of the copy, and
the copy's revision, schema and row counts must equal the source's. quick_check proves every page
and b-tree of the copy is whole and readable, at O(N); whether the indexes agree with their rows is
the source's property, which integrity_check proves at O(N log N). The fsync, the sha256 and the
check run side by side (`_sync_and_verify`): the backup costs the copy plus the slowest of the
three, not their sum (bench/backups.py measures it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.engine import URL

from deployments.errors import BackupFailed
from tasks.database_state import DatabaseState
from tasks.databases import read_only_uri
from tasks.files import fsync_file, sha256_of


@dataclass(frozen=True)
class CheckedCopy:
    source: DatabaseState
    sha256: str
    size_bytes: int
    check: str  # quick_check or integrity_check
    sqlite_version: str
    seconds: dict[str, float] = field(default_factory=dict)


def copy_and_verify(parsed: URL, target: Path, expected_revision: str | None, check: str) -> CheckedCopy:
    """Copy the database at `parsed` to `target`, then sync, hash and check the copy; BackupFailed
    unless the copy is whole and agrees with the source's snapshot."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    source = _copy(parsed, target, expected_revision)
    seconds["dump"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    pragma, digest = _sync_and_verify(target, source, check, seconds)
    seconds["verify"] = round(time.perf_counter() - started, 3)
    return CheckedCopy(source, digest, target.stat().st_size, pragma, sqlite3.sqlite_version, seconds)


def state_of(path: Path) -> DatabaseState:
    """A SQLite file's state, opened read-only."""
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        return sqlite_state(conn)
    finally:
        conn.close()


@contextmanager
def scratch_copy(parsed: URL, workdir: Path, lock_timeout_ms: int, step: str) -> Iterator[str]:
    """A throwaway copy of the database, in `workdir`, removed after the block."""
    copy_path = workdir / f"rehearsal-{os.getpid()}-{time.monotonic_ns()}.sqlite3"
    source = sqlite3.connect(read_only_uri(str(parsed.database)), uri=True, timeout=lock_timeout_ms / 1000)
    destination = sqlite3.connect(copy_path)
    try:
        source.backup(destination)
    except sqlite3.OperationalError as exc:
        copy_path.unlink(missing_ok=True)
        raise BackupFailed(step, f"copying the database failed ({exc})",
                           "another process holds the database locked; wait for it and run again") from None
    finally:
        destination.close()
        source.close()
    try:
        yield parsed.set(database=str(copy_path)).render_as_string(hide_password=False)
    finally:
        copy_path.unlink(missing_ok=True)


def _sync_and_verify(target: Path, source: DatabaseState, check: str, seconds: dict[str, float]) -> tuple[str, str]:
    """fsync, sha256 and SQLite's own check of the copy, side by side.

    Each goes through the whole file, and they wait on different things: the fsync on the disk, the
    hash and the check each on a core (hashlib and SQLite run without the GIL). One after the other
    they cost more than the copy itself; side by side, as long as the slowest of them. Nothing is
    published before all three have finished without error. Returns the check's name and the hash.
    """
    verify = functools.partial(_verify, target, source, check)

    def timed(name: str, work: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            started = time.perf_counter()
            try:
                return work()
            finally:
                seconds[name] = round(time.perf_counter() - started, 3)
        return run

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="verify-backup") as pool:
        synced = pool.submit(timed("fsync", functools.partial(fsync_file, target)))
        digest = pool.submit(timed("sha256", functools.partial(sha256_of, target)))
        checked = pool.submit(timed("check", verify))
    # All three have ended here. A failed fsync means the file may not be on disk: it is reported first.
    synced.result()
    return checked.result(), digest.result()


def _copy(parsed: URL, target: Path, expected_revision: str | None) -> DatabaseState:
    """Copy the database, and read the source's state in the read transaction the copy is taken in."""
    source_path = parsed.database or ""
    if not Path(source_path).exists():
        raise BackupFailed("backup database", f"the SQLite database {source_path} does not exist",
                           "check database.url")
    source = sqlite3.connect(read_only_uri(source_path), uri=True, isolation_level=None, timeout=30)
    destination = sqlite3.connect(target)
    try:
        # A new file that is thrown away unless complete: no journal, and one fsync of the whole
        # file (while it is verified) instead of SQLite's at commit.
        destination.execute("PRAGMA journal_mode=OFF")
        destination.execute("PRAGMA synchronous=OFF")
        source.execute("BEGIN")
        state = sqlite_state(source)  # starts the read transaction: the backup reads the same snapshot
        source.backup(destination)
        source.execute("COMMIT")
    finally:
        destination.close()
        source.close()
    if state.revision != expected_revision:
        raise BackupFailed("backup database", f"the database moved to revision {state.revision} "
                           f"(expected {expected_revision})", "something else is migrating; stop it")
    return state


def sqlite_state(conn: sqlite3.Connection) -> DatabaseState:
    """Revision, schema fingerprint (every object's SQL in sqlite_master) and row counts of a SQLite file."""
    counts, revision = _counts(conn)
    schema = conn.execute("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master "
                          "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    fingerprint = hashlib.sha256(json.dumps(schema).encode()).hexdigest()
    return DatabaseState(revision, fingerprint, counts)


def _verify(target: Path, source: DatabaseState, check: str) -> str:
    conn = sqlite3.connect(read_only_uri(target), uri=True)
    try:
        # Mapped, the check's many lookups (every index entry against its row) are memory reads
        # instead of a read() each through a 2 MB page cache: a fifth less CPU on a 1 GB database.
        # The copy is our own file, which nothing else writes or truncates while it is mapped.
        conn.execute(f"PRAGMA mmap_size={target.stat().st_size}")
        pragma = "quick_check" if check == "quick" else "integrity_check"
        try:
            result = conn.execute(f"PRAGMA {pragma}").fetchone()[0]
        except sqlite3.DatabaseError as exc:  # a page so damaged that the check itself cannot read on
            result = str(exc)
        if result != "ok":
            raise BackupFailed("verify backup", f"{pragma} of the copy says {result!r}",
                               "the source database may be damaged; do not deploy")
        copy = sqlite_state(conn)
    finally:
        conn.close()
    problems = source.differences(copy)
    if problems:
        raise BackupFailed("verify backup", f"the copy does not match the database it was taken from: "
                           f"{'; '.join(problems)}", "do not deploy; check the disk and run again")
    return pragma


def _counts(conn: sqlite3.Connection) -> tuple[dict[str, int], str | None]:
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    counts = {table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}
    revision = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    return counts, revision


def restore_file(path: Path, parsed: URL) -> None:
    source = sqlite3.connect(read_only_uri(path), uri=True)
    # The backup API replaces every page of the live database under its write lock, so the app's
    # connections see either the old database or the restored one, never a mix.
    destination = sqlite3.connect(parsed.database or "", timeout=30)
    try:
        source.backup(destination)
    finally:
        destination.close()
        source.close()
