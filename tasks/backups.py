"""Pre-deployment backups: taken, verified, restorable; never a half-written file taken for a backup.

A backup is a directory `<backups>/<tag>/` holding the database copy and `manifest.json` (tag, run,
database kind, source URL without password, alembic revision, git SHA, row counts, size, sha256, tool
versions). It is written as `<tag>.partial/`, fsynced, verified, then renamed: a directory without
`.partial` is always a complete, verified backup.

SQLite: the online backup API (a file copy of a WAL database can miss committed pages), then
`PRAGMA quick_check` (or `integrity_check`, `[backups] sqlite_check`), the revision and the row
counts read back from the copy. The copy is the source page for page: whether its indexes agree
with its rows is the source's property, which integrity_check proves again at O(N log N) on every
deploy; quick_check proves every page and b-tree of the copy is whole and readable, at O(N).
PostgreSQL: the row counts and `pg_dump -Fc` read one exported snapshot, so they describe the same
data; the password goes in a 0600 passfile (never argv or environment); verification is a full
`pg_restore -f /dev/null` read of the archive (`--list` reads only its table of contents).
The fsync, the sha256 and that check of the copy run side by side (`_sync_and_verify`): the backup
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
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, Connection, make_url

from deployments.config import EnvironmentConfig
from deployments.errors import BackupFailed
from deployments.secrets import redact, resolve_app_environment
from tasks import change_step
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
    seconds: dict[str, float] = field(default_factory=dict)
    verified_by: str = ""  # the check the copy passed: quick_check, integrity_check, pg_restore

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        rows = sum(self.row_counts.values())
        return (f"{self.tag}: {self.kind}, revision {self.revision}, {rows} rows, {self.size_bytes} bytes, "
                f"sha256 {self.sha256[:12]}, verified" + (f" by {self.verified_by}" if self.verified_by else ""))


def new_tag(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime(TAG_FORMAT)


def public_url(url: str) -> str:
    """The URL with any password removed: safe for manifests, logs and artifacts."""
    return make_url(url).render_as_string(hide_password=True)


def take_backup(url: str, directory: Path, tag: str, *, revision: str | None, git_sha: str | None,
                run_id: str | None, pg_dump: str = "pg_dump", pg_restore: str = "pg_restore",
                sqlite_check: str = "quick") -> Manifest:
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
        started = time.perf_counter()
        if kind == "sqlite":
            _sqlite_backup(parsed, target, manifest)
        else:
            _postgres_backup(parsed, target, manifest, pg_dump)
        manifest.seconds["dump"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        _sync_and_verify(target, manifest, pg_restore, sqlite_check)
        manifest.seconds["verify"] = round(time.perf_counter() - started, 3)
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


def verify_file(directory: Path, manifest: Manifest) -> Path:
    """The backup's file, after checking it is the one the manifest describes."""
    path = directory / manifest.tag / manifest.file
    if not path.exists() or _sha256(path) != manifest.sha256:
        raise BackupFailed("restore backup", f"backup {manifest.tag} is missing or its sha256 does not match",
                           "do not restore it; pick an older verified backup")
    return path


def restore_backup(url: str, directory: Path, tag: str, pg_restore: str = "pg_restore") -> Manifest:
    """Put the database back exactly as the backup has it; checks revision and row counts after."""
    manifest = load_manifest(directory, tag)
    path = verify_file(directory, manifest)
    parsed = make_url(url)
    if manifest.kind == "sqlite":
        _sqlite_restore(path, parsed)
    else:
        _postgres_restore(path, parsed, pg_restore, keep_tables=set(manifest.row_counts))
    counts, revision = _live_counts(url)
    if revision != manifest.revision or counts != manifest.row_counts:
        raise BackupFailed("restore backup", f"after restoring {tag} the database is at {revision} with "
                           f"{sum(counts.values())} rows, the backup says {manifest.revision} with "
                           f"{sum(manifest.row_counts.values())}", "keep the app in maintenance and restore by hand")
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


def _sync_and_verify(target: Path, manifest: Manifest, pg_restore: str, sqlite_check: str) -> None:
    """fsync, sha256 and the database's own check of the copy, side by side.

    Each goes through the whole file, and they wait on different things: the fsync on the disk, the
    hash and the check each on a core (hashlib, SQLite and pg_restore run without the GIL). One after
    the other they cost more than the copy itself; side by side, as long as the slowest of them.
    Nothing is published before all three have finished without error.
    """
    check = (functools.partial(_verify_sqlite, target, manifest, sqlite_check) if manifest.kind == "sqlite"
             else functools.partial(_verify_postgres_archive, target, pg_restore))

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
    if manifest.kind != "sqlite":
        manifest.verified_by = "pg_restore"
    manifest.sha256 = digest.result()
    manifest.size_bytes = target.stat().st_size


def _sqlite_backup(parsed: URL, target: Path, manifest: Manifest) -> None:
    source_path = parsed.database or ""
    if not Path(source_path).exists():
        raise BackupFailed("backup database", f"the SQLite database {source_path} does not exist",
                           "check database.url")
    source = sqlite3.connect(read_only_uri(source_path), uri=True)
    destination = sqlite3.connect(target)
    try:
        # A new file that is thrown away unless complete: no journal, and one fsync of the whole
        # file (while it is verified) instead of SQLite's at commit.
        destination.execute("PRAGMA journal_mode=OFF")
        destination.execute("PRAGMA synchronous=OFF")
        source.backup(destination)
        manifest.tool_versions["sqlite"] = sqlite3.sqlite_version
    finally:
        destination.close()
        source.close()


def _verify_sqlite(target: Path, manifest: Manifest, check: str) -> None:
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
        manifest.verified_by = pragma
        counts, revision = _counts_sqlite(conn)
    finally:
        conn.close()
    if revision != manifest.revision:
        raise BackupFailed("verify backup", f"the copy is at revision {revision}, the database was at "
                           f"{manifest.revision}", "something migrated during the backup; run again")
    manifest.row_counts = counts


def _counts_sqlite(conn: sqlite3.Connection) -> tuple[dict[str, int], str | None]:
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    counts = {table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}
    revision = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    return counts, revision


def _live_counts(url: str) -> tuple[dict[str, int], str | None]:
    engine = connect(url, "deploy-backup-verify")
    try:
        with engine.connect() as conn:
            tables = sorted(t for t in inspect(conn).get_table_names())
            counts = {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}
            revision = (conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                        if "alembic_version" in tables else None)
    finally:
        engine.dispose()
    return counts, revision


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


@contextmanager
def _passfile(parsed: URL) -> Iterator[dict[str, str]]:
    """libpq connection settings: host, port, user, db in the environment; the password in a 0600 file."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10"}
    with tempfile.TemporaryDirectory(prefix="deploy-pg-") as tmp:
        passfile = Path(tmp) / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            if parsed.password:
                # Any database: the same credentials serve the rehearsal's scratch copy.
                fields = [parsed.host or "localhost", str(parsed.port or 5432), "*",
                          parsed.username or "*", str(parsed.password)]
                handle.write(":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n")
        env["PGPASSFILE"] = str(passfile)
        yield env


def _pg_args(parsed: URL) -> list[str]:
    args = ["--host", parsed.host or "localhost", "--port", str(parsed.port or 5432)]
    if parsed.username:
        args += ["--username", parsed.username]
    return args + ["--no-password"]


def _postgres_backup(parsed: URL, target: Path, manifest: Manifest, pg_dump: str) -> None:
    url = parsed.render_as_string(hide_password=False)
    engine = connect(url, "deploy-backup")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            with _passfile(parsed) as env, tempfile.TemporaryFile() as stderr:
                argv = [pg_dump, *_pg_args(parsed), "--format=custom", "--snapshot", snapshot,
                        "--file", str(target), "--dbname", parsed.database or ""]
                dump = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
                try:
                    # pg_dump reads the exported snapshot in a session of its own; the counts read it
                    # here meanwhile (a full scan of each table, on the other core), so both describe
                    # the same data.
                    _read_snapshot(conn, manifest)
                    returncode = dump.wait(timeout=6 * 3600)
                finally:
                    if dump.poll() is None:
                        dump.kill()
                        dump.wait()
                stderr.seek(0)
                errors = stderr.read().decode(errors="replace")
                manifest.tool_versions["pg_dump"] = _tool_version(pg_dump)
            conn.exec_driver_sql("COMMIT")
    finally:
        engine.dispose()
    if returncode != 0:
        raise BackupFailed("backup database", f"pg_dump failed: {redact(errors.strip()[-300:])}",
                           "fix the cause (disk, permissions, connection); nothing was migrated")


def _read_snapshot(conn: Connection, manifest: Manifest) -> None:
    """Row counts, revision and server version, in the transaction that exported the snapshot."""
    tables = sorted(inspect(conn).get_table_names())
    manifest.row_counts = {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}
    if "alembic_version" in tables:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if revision != manifest.revision:
            raise BackupFailed("backup database", f"the database moved to revision {revision} "
                               f"(expected {manifest.revision})", "something else is migrating; stop it")
    manifest.tool_versions["server"] = str(conn.exec_driver_sql("SHOW server_version").scalar())


def _verify_postgres_archive(target: Path, pg_restore: str) -> None:
    result = subprocess.run([pg_restore, "--file", os.devnull, str(target)], capture_output=True, text=True,
                            timeout=6 * 3600, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if result.returncode != 0:
        raise BackupFailed("verify backup", f"pg_restore cannot read the archive: {redact(result.stderr.strip()[-300:])}",
                           "do not deploy; check pg_dump and the disk")


def _postgres_restore(path: Path, parsed: URL, pg_restore: str, keep_tables: set[str]) -> None:
    _end_other_sessions(parsed)
    _drop_tables_not_in(parsed, keep_tables)
    with _passfile(parsed) as env:
        argv = [pg_restore, *_pg_args(parsed), "--single-transaction", "--clean", "--if-exists", "--no-owner",
                "--exit-on-error", "--dbname", parsed.database or "", str(path)]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=6 * 3600)
    if result.returncode != 0:
        raise BackupFailed("restore backup", f"pg_restore failed: {redact(result.stderr.strip()[-300:])}",
                           "the database is unchanged (single transaction); keep maintenance on and restore by hand")


def _drop_tables_not_in(parsed: URL, keep_tables: set[str]) -> None:
    """`--clean` drops only what the archive holds: a table a failed migration created would survive."""
    engine = connect(parsed.render_as_string(hide_password=False), "deploy-restore")
    try:
        with engine.begin() as conn:
            for table in inspect(conn).get_table_names():
                if table not in keep_tables:
                    conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    finally:
        engine.dispose()


def _end_other_sessions(parsed: URL) -> None:
    """Sessions of the app would block --clean's DROPs until lock_timeout; the app is in maintenance."""
    engine = connect(parsed.render_as_string(hide_password=False), "deploy-restore")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
            conn.commit()
    finally:
        engine.dispose()


def _tool_version(tool: str) -> str:
    result = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


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
def scratch_copy(url: str, workdir: Path, pg_dump: str = "pg_dump", pg_restore: str = "pg_restore") -> Iterator[str]:
    """A throwaway copy of the database at `url`, for rehearsing migrations on real data."""
    parsed = make_url(url)
    workdir.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "sqlite":
        copy = workdir / f"rehearsal-{os.getpid()}-{time.monotonic_ns()}.sqlite3"
        source = sqlite3.connect(read_only_uri(str(parsed.database)), uri=True)
        destination = sqlite3.connect(copy)
        try:
            source.backup(destination)
        finally:
            destination.close()
            source.close()
        try:
            yield parsed.set(database=str(copy)).render_as_string(hide_password=False)
        finally:
            copy.unlink(missing_ok=True)
        return
    scratch = f"{(parsed.database or 'db')[:40]}_rehearsal_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    admin = connect(parsed.render_as_string(hide_password=False), "deploy-rehearsal")
    dump = workdir / f"{scratch}.dump"
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'CREATE DATABASE "{scratch}"'))
        with _passfile(parsed) as env:
            for argv in (
                [pg_dump, *_pg_args(parsed), "--format=custom", "--file", str(dump), "--dbname", parsed.database or ""],
                [pg_restore, *_pg_args(parsed), "--no-owner", "--exit-on-error", "--dbname", scratch, str(dump)],
            ):
                result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=6 * 3600)
                if result.returncode != 0:
                    raise BackupFailed("test migrations", f"copying the database failed: "
                                       f"{redact(result.stderr.strip()[-300:])}", "check the database and disk space")
        yield parsed.set(database=scratch).render_as_string(hide_password=False)
    finally:
        dump.unlink(missing_ok=True)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
        admin.dispose()


@change_step("backup-database")
def backup_database(config: EnvironmentConfig, revision: str | None, git_sha: str, run_id: str | None,
                    protected: set[str]) -> Manifest:
    """Runbook step 3: a tagged, verified pre-deployment backup; then old backups beyond `keep` go."""
    app_env = resolve_app_environment(config)
    manifest = take_backup(app_env[config.database.app_variable], config.backups.directory, new_tag(),
                           revision=revision, git_sha=git_sha, run_id=run_id,
                           pg_dump=config.backups.pg_dump, pg_restore=config.backups.pg_restore,
                           sqlite_check=config.backups.sqlite_check)
    prune(config.backups.directory, config.backups.keep, protected | {manifest.tag})
    return manifest


@change_step("restore-backup")
def restore_database(config: EnvironmentConfig, tag: str) -> Manifest:
    """Rollback, last line of defence: put the database back exactly as the verified backup has it."""
    app_env = resolve_app_environment(config)
    return restore_backup(app_env[config.database.app_variable], config.backups.directory, tag,
                          pg_restore=config.backups.pg_restore)
