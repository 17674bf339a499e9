"""Pre-deployment backups: taken, verified, restorable; never a half-written file taken for a backup.

A backup is a directory `<backups>/<tag>/` holding the database copy and `manifest.json` (tag, run,
database kind, source URL without password, alembic revision, git SHA, row counts, size, sha256, tool
versions). It is written as `<tag>.partial/`, fsynced, verified, then renamed: a directory without
`.partial` is always a complete, verified backup.

SQLite: the online backup API (a file copy of a WAL database can miss committed pages), run inside
a read transaction on the source that also reads the source's revision, schema and row counts, so
both describe one snapshot; then `PRAGMA quick_check` (or `integrity_check`, `[backups]
sqlite_check`) of the copy, and the copy's revision, schema and row counts must equal the source's.
quick_check proves every page and b-tree of the copy is whole and readable, at O(N); whether the
indexes agree with their rows is the source's property, which integrity_check proves at O(N log N).
PostgreSQL (`tasks.postgres_backups`): proven by a restore. `pg_dump -Fc` streams into the archive
file and, at once, into `pg_restore` on a scratch database; the restored copy's revision, schema and
row counts must equal the dumped snapshot's. A damaged table of contents that `pg_restore --list`
would accept fails here. Every wait for a lock is bounded and names its holder.
The fsync, the sha256 and the check of a SQLite copy run side by side (`_sync_and_verify`): the backup
costs the copy plus the slowest of the three, not their sum (bench/backups.py measures it).
Restore: the backup API into the live file, or `pg_restore --single-transaction --clean`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import shutil
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy.engine import URL, make_url

from deployments.config import EnvironmentConfig
from deployments.errors import BackupFailed
from deployments.secrets import redact, resolve_app_environment
from tasks import change_step
from tasks import postgres_backups as postgres
from tasks import run_log
from tasks.lock_waits import session_name
from tasks.database_state import DatabaseState, read_state
from tasks.migrations import connect, read_only_uri

TAG_FORMAT = "pre-deployment-%Y%m%d-%H%M%S"
SQLITE_FILE = "database.sqlite3"
POSTGRES_FILE = "database.dump"
MANIFEST = "manifest.json"


@dataclass
class Manifest:
    tag: str
    kind: str
    source: str
    revision: str | None
    git_sha: str | None
    run_id: str | None
    file: str
    size_bytes: int = 0
    sha256: str = ""
    row_counts: dict[str, int] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # dump, verify, restore (a restore's measured time)...
    verified_by: str = ""  # what proved the copy: quick_check or integrity_check, or a restore
    fingerprint: str = ""  # the schema's, as tasks.database_state reads it; the copy's equals the source's

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        rows = sum(self.row_counts.values())
        restore = f", restores in {self.seconds['restore']:.1f} s" if "restore" in self.seconds else ""
        return (f"{self.tag}: {self.kind}, revision {self.revision}, {rows} rows, {self.size_bytes} bytes, "
                f"sha256 {self.sha256[:12]}, verified" + (f" by {self.verified_by}" if self.verified_by else "")
                + restore)


def new_tag(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime(TAG_FORMAT)


def public_url(url: str) -> str:
    """The URL with any password removed: safe for manifests, logs and artifacts."""
    return make_url(url).render_as_string(hide_password=True)


def take_backup(url: str, directory: Path, tag: str, *, revision: str | None, git_sha: str | None,
                run_id: str | None, pg_dump: str = "pg_dump", pg_restore: str = "pg_restore",
                sqlite_check: str = "quick", lock_timeout_ms: int = 5000, compression: int = 1) -> Manifest:
    """Write, verify and publish a backup of the database at `url`. BackupFailed leaves nothing behind."""
    parsed = make_url(url)
    kind = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql"
    final = directory / tag
    partial = directory / f"{tag}.partial"
    if final.exists():
        raise BackupFailed("backup database", f"a backup tagged {tag} already exists",
                           "wait a second and run again; tags are unique to the second")
    manifest = Manifest(tag=tag, kind=kind, source=public_url(url), revision=revision, git_sha=git_sha,
                        run_id=run_id, file=SQLITE_FILE if kind == "sqlite" else POSTGRES_FILE,
                        created_at=datetime.now(timezone.utc).isoformat())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        target = partial / manifest.file
        if kind == "sqlite":
            started = time.perf_counter()
            source = _sqlite_backup(parsed, target, manifest)
            manifest.seconds["dump"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            _sync_and_verify(target, manifest, source, sqlite_check)
            manifest.seconds["verify"] = round(time.perf_counter() - started, 3)
        else:
            tools = postgres.Tools(pg_dump, pg_restore, lock_timeout_ms, session_name(), compression)
            _record_proof(manifest, postgres.dump_and_prove(parsed, target, tools, revision, run_log()))
        _write_json(partial / MANIFEST, manifest.to_json())
        _fsync_dir(partial)
        os.rename(partial, final)
        _fsync_dir(directory)
    except BackupFailed:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except (OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise BackupFailed("backup database", f"the backup could not be written ({type(exc).__name__}: "
                           f"{redact(str(exc))})", "free disk space or fix the backup directory; "
                           "nothing was migrated") from None
    return manifest


def load_manifest(directory: Path, tag: str) -> Manifest:
    path = directory / tag / MANIFEST
    try:
        return Manifest(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BackupFailed("restore backup", f"backup {tag} has no readable manifest ({exc})",
                           "pick another backup with `ls` in the backup directory") from None


def latest_manifest(directory: Path) -> Manifest | None:
    """The newest published backup's manifest, if any can be read: what the last backup cost."""
    for path in sorted(directory.glob("pre-deployment-*/" + MANIFEST), reverse=True):
        try:
            return Manifest(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
    return None


def verify_file(directory: Path, manifest: Manifest) -> Path:
    """The backup's file, after checking it is the one the manifest describes."""
    path = directory / manifest.tag / manifest.file
    if not path.exists() or _sha256(path) != manifest.sha256:
        raise BackupFailed("restore backup", f"backup {manifest.tag} is missing or its sha256 does not match",
                           "do not restore it; pick an older verified backup")
    return path


def restore_backup(url: str, directory: Path, tag: str, pg_restore: str = "pg_restore",
                   lock_timeout_ms: int = 5000) -> Manifest:
    """Put the database back exactly as the backup has it; its revision, row counts and (for a backup
    that recorded one) schema fingerprint are checked against the manifest after."""
    manifest = load_manifest(directory, tag)
    path = verify_file(directory, manifest)
    parsed = make_url(url)
    if manifest.kind == "sqlite":
        _sqlite_restore(path, parsed)
    else:
        tools = postgres.Tools(pg_restore=pg_restore, lock_timeout_ms=lock_timeout_ms, session=session_name())
        postgres.restore_archive(path, parsed, tools, set(manifest.row_counts), run_log())
    live = _live_state(parsed, manifest.kind)
    recorded = DatabaseState(manifest.revision, manifest.fingerprint or live.fingerprint, manifest.row_counts)
    problems = recorded.differences(live)
    if problems:
        raise BackupFailed("restore backup", f"after restoring {tag} the database differs from the backup: "
                           f"{'; '.join(problems)}", "keep the app in maintenance and restore by hand")
    return manifest


def prune(directory: Path, keep: int, protected: set[str]) -> list[str]:
    """Delete the oldest backups beyond `keep`, never a protected one (last good, unfinished releases)."""
    backups = sorted(p.name for p in directory.glob("pre-deployment-*") if p.is_dir() and not p.name.endswith(".partial"))
    removed = []
    for tag in backups[:-keep] if len(backups) > keep else []:
        if tag not in protected:
            shutil.rmtree(directory / tag)
            removed.append(tag)
    return removed


def _record_proof(manifest: Manifest, proof: postgres.ProvenDump) -> None:
    manifest.row_counts = proof.source.row_counts
    manifest.fingerprint = proof.source.fingerprint
    manifest.sha256 = proof.sha256
    manifest.size_bytes = proof.size_bytes
    manifest.seconds.update(dump=proof.dump_seconds, restore=proof.restore_seconds)
    manifest.tool_versions.update(server=proof.server_version, pg_dump=proof.pg_dump_version)
    manifest.verified_by = "a restore into a scratch database (same revision, schema and row counts)"


def _sync_and_verify(target: Path, manifest: Manifest, source: DatabaseState, sqlite_check: str) -> None:
    """fsync, sha256 and SQLite's own check of the copy, side by side.

    Each goes through the whole file, and they wait on different things: the fsync on the disk, the
    hash and the check each on a core (hashlib and SQLite run without the GIL). One after the other
    they cost more than the copy itself; side by side, as long as the slowest of them. Nothing is
    published before all three have finished without error.
    """
    check = functools.partial(_verify_sqlite, target, manifest, source, sqlite_check)

    def timed(name: str, work: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            started = time.perf_counter()
            try:
                return work()
            finally:
                manifest.seconds[name] = round(time.perf_counter() - started, 3)
        return run

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="verify-backup") as pool:
        synced = pool.submit(timed("fsync", functools.partial(_fsync_file, target)))
        digest = pool.submit(timed("sha256", functools.partial(_sha256, target)))
        checked = pool.submit(timed("check", check))
    # All three have ended here. A failed fsync means the file may not be on disk: it is reported first.
    synced.result()
    checked.result()
    manifest.sha256 = digest.result()
    manifest.size_bytes = target.stat().st_size


def _sqlite_backup(parsed: URL, target: Path, manifest: Manifest) -> DatabaseState:
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
        manifest.tool_versions["sqlite"] = sqlite3.sqlite_version
    finally:
        destination.close()
        source.close()
    if state.revision != manifest.revision:
        raise BackupFailed("backup database", f"the database moved to revision {state.revision} "
                           f"(expected {manifest.revision})", "something else is migrating; stop it")
    return state


def sqlite_state(conn: sqlite3.Connection) -> DatabaseState:
    """Revision, schema fingerprint (every object's SQL in sqlite_master) and row counts of a SQLite file."""
    counts, revision = _counts_sqlite(conn)
    schema = conn.execute("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master "
                          "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    fingerprint = hashlib.sha256(json.dumps(schema).encode()).hexdigest()
    return DatabaseState(revision, fingerprint, counts)


def _verify_sqlite(target: Path, manifest: Manifest, source: DatabaseState, check: str) -> None:
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
    manifest.verified_by = pragma
    manifest.row_counts = copy.row_counts
    manifest.fingerprint = copy.fingerprint


def _counts_sqlite(conn: sqlite3.Connection) -> tuple[dict[str, int], str | None]:
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    counts = {table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}
    revision = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    return counts, revision


def _live_state(parsed: URL, kind: str) -> DatabaseState:
    """The restored database, read the way its backup was: SQLite by its own catalogue, PostgreSQL
    through the inspector."""
    if kind == "sqlite":
        conn = sqlite3.connect(read_only_uri(parsed.database or ""), uri=True)
        try:
            return sqlite_state(conn)
        finally:
            conn.close()
    engine = connect(parsed.render_as_string(hide_password=False), session_name("restore-verify"))
    try:
        with engine.connect() as conn:
            return read_state(conn)
    finally:
        engine.dispose()


def _sqlite_restore(path: Path, parsed: URL) -> None:
    source = sqlite3.connect(read_only_uri(path), uri=True)
    # The backup API replaces every page of the live database under its write lock, so the app's
    # connections see either the old database or the restored one, never a mix.
    destination = sqlite3.connect(parsed.database or "", timeout=30)
    try:
        source.backup(destination)
    finally:
        destination.close()
        source.close()


def _sha256(path: Path) -> str:
    """Hashed memory-mapped, in one call without the GIL: no buffer copies, a sixth faster than
    reading it in chunks (bench/backups.py). A file that cannot be mapped is read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        try:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                digest.update(mapped)
                return digest.hexdigest()
        except (OSError, ValueError):  # an empty file, or a filesystem without mmap
            pass
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def scratch_copy(url: str, workdir: Path, pg_dump: str = "pg_dump", pg_restore: str = "pg_restore",
                 lock_timeout_ms: int = 5000, step: str = "test migrations") -> Iterator[str]:
    """A throwaway copy of the database at `url`, for rehearsing migrations on real data."""
    parsed = make_url(url)
    workdir.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() != "sqlite":
        tools = postgres.Tools(pg_dump, pg_restore, lock_timeout_ms, session_name())
        with postgres.scratch_copy(parsed, tools, run_log(), step) as copy:
            yield copy.render_as_string(hide_password=False)
        return
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


@change_step("backup-database")
def backup_database(config: EnvironmentConfig, revision: str | None, git_sha: str, run_id: str | None,
                    protected: set[str]) -> Manifest:
    """Runbook step 3: a tagged, verified pre-deployment backup; then old backups beyond `keep` go."""
    app_env = resolve_app_environment(config)
    manifest = take_backup(app_env[config.database.app_variable], config.backups.directory, new_tag(),
                           revision=revision, git_sha=git_sha, run_id=run_id,
                           pg_dump=config.backups.pg_dump, pg_restore=config.backups.pg_restore,
                           sqlite_check=config.backups.sqlite_check,
                           lock_timeout_ms=config.database.lock_timeout_ms,
                           compression=config.backups.pg_dump_compression)
    prune(config.backups.directory, config.backups.keep, protected | {manifest.tag})
    return manifest


@change_step("restore-backup")
def restore_database(config: EnvironmentConfig, tag: str) -> Manifest:
    """Rollback, last line of defence: put the database back exactly as the verified backup has it."""
    app_env = resolve_app_environment(config)
    return restore_backup(app_env[config.database.app_variable], config.backups.directory, tag,
                          pg_restore=config.backups.pg_restore, lock_timeout_ms=config.database.lock_timeout_ms)
