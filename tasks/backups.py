"""Pre-deployment backups: taken, verified, restorable; never a half-written file taken for a backup.

A backup is a directory `<backups>/<tag>/` holding the database copy and `manifest.json` (tag, run,
database kind, source URL without password, alembic revision, git SHA, row counts, size, sha256, tool
versions). It is written as `<tag>.partial/`, fsynced, verified, then renamed: a directory without
`.partial` is always a complete, verified backup.

SQLite (`tasks.sqlite_backups`): the online backup API inside a read transaction that also reads
the source's revision, schema and row counts; the copy is synced, hashed and checked (`quick_check`
or `integrity_check`) side by side and must agree with the source. PostgreSQL
(`tasks.postgres_backups`): proven by a restore. `pg_dump -Fc` streams into the archive file and,
at once, into `pg_restore` on a scratch database; the restored copy's revision, schema and row
counts must equal the dumped snapshot's. A damaged table of contents that `pg_restore --list` would
accept fails here. Every wait for a lock is bounded and names its holder.
Restore: the backup API into the live file, or `pg_restore --single-transaction --clean`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy.engine import URL, make_url

from deployments.config import EnvironmentConfig
from deployments.errors import BackupFailed
from deployments.secrets import redact, resolve_database_url
from tasks.steps import change_step
from tasks import postgres_backups as postgres
from tasks import sqlite_backups as sqlite
from deployments.logs import run_log
from tasks.database_state import DatabaseState, read_state
from tasks.databases import connect, session_name
from tasks.files import fsync_dir, sha256_of, write_json

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
        restore = f", restored into a scratch copy in {self.seconds['restore']:.1f} s" if "restore" in self.seconds else ""
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
            _record_copy(manifest, sqlite.copy_and_verify(parsed, target, revision, sqlite_check))
        else:
            tools = postgres.Tools(pg_dump, pg_restore, lock_timeout_ms, session_name(), compression)
            _record_proof(manifest, postgres.dump_and_prove(parsed, target, tools, revision, run_log()))
        write_json(partial / MANIFEST, manifest.to_json())
        fsync_dir(partial)
        os.rename(partial, final)
        fsync_dir(directory)
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
    if not path.exists() or sha256_of(path) != manifest.sha256:
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
        sqlite.restore_file(path, parsed)
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


def _record_copy(manifest: Manifest, copy: sqlite.CheckedCopy) -> None:
    manifest.row_counts = copy.source.row_counts
    manifest.fingerprint = copy.source.fingerprint
    manifest.sha256 = copy.sha256
    manifest.size_bytes = copy.size_bytes
    manifest.seconds.update(copy.seconds)
    manifest.tool_versions["sqlite"] = copy.sqlite_version
    manifest.verified_by = copy.check


def _record_proof(manifest: Manifest, proof: postgres.ProvenDump) -> None:
    manifest.row_counts = proof.source.row_counts
    manifest.fingerprint = proof.source.fingerprint
    manifest.sha256 = proof.sha256
    manifest.size_bytes = proof.size_bytes
    manifest.seconds.update(dump=proof.dump_seconds, restore=proof.restore_seconds)
    manifest.tool_versions.update(server=proof.server_version, pg_dump=proof.pg_dump_version)
    manifest.verified_by = "a restore into a scratch database (same revision, schema and row counts)"


def _live_state(parsed: URL, kind: str) -> DatabaseState:
    """The restored database, read the way its backup was: SQLite by its own catalogue, PostgreSQL
    through the inspector."""
    if kind == "sqlite":
        return sqlite.state_of(Path(parsed.database or ""))
    engine = connect(parsed.render_as_string(hide_password=False), session_name("restore-verify"))
    try:
        with engine.connect() as conn:
            return read_state(conn)
    finally:
        engine.dispose()


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
    with sqlite.scratch_copy(parsed, workdir, lock_timeout_ms, step) as copy:
        yield copy


@contextmanager
def empty_database(url: str, workdir: Path, purpose: str, step: str, lock_timeout_ms: int = 5000) -> Iterator[str]:
    """A new, empty database beside the one at `url` (PostgreSQL: on its server; SQLite: a file in
    `workdir`), dropped after the block; its URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        admin = connect(url, session_name(purpose), lock_timeout_ms=lock_timeout_ms)
        try:
            with postgres.scratch_database(admin, parsed, purpose, step) as name:
                yield parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.dispose()
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{purpose}-{os.getpid()}-{os.urandom(4).hex()}.db"
    try:
        yield parsed.set(database=str(path)).render_as_string(hide_password=False)
    finally:
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)


@change_step("backup-database")
def backup_database(config: EnvironmentConfig, revision: str | None, git_sha: str, run_id: str | None,
                    protected: set[str]) -> Manifest:
    """Runbook step 3: a tagged, verified pre-deployment backup; then old backups beyond `keep` go."""
    manifest = take_backup(resolve_database_url(config), config.backups.directory, new_tag(),
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
    return restore_backup(resolve_database_url(config), config.backups.directory, tag,
                          pg_restore=config.backups.pg_restore, lock_timeout_ms=config.database.lock_timeout_ms)
