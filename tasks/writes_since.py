"""What restoring a backup would discard: the rows that differ between the live database and the backup.

A restore puts every table back as the backup holds it, so anything written since (by users, by the
release's own code, by a critical path) is lost. Before any restore the rollback compares, table by
table, the live rows with the backup's, matched by primary key (SQLite: rowid) on the columns both
have: rows inserted (live only), updated (a column of both differs) and deleted (backup only), plus
every row of a table the backup does not have. On SQLite the backup file is read as it is; a
PostgreSQL archive is first restored into a scratch database beside the live one (dropped after).
Statistics counters would be cheaper, but they cannot tell users' writes from the release's own
and are flushed lazily; the comparison is exact, and bounded by COMPARE_SECONDS: past it the answer
is "unknown", which an automatic rollback treats as data that would be lost.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, inspect, select, table as table_clause, column as column_clause, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from deployments.config import EnvironmentConfig
from deployments.errors import BackupFailed, RollbackFailed
from deployments.secrets import redact, resolve_database_url
from tasks import postgres_backups as postgres
from tasks.backups import empty_database, load_manifest, verify_file
from tasks.databases import connect, session_name
from tasks.processes import Advice, Command, run
from tasks.steps import read_step

COMPARE_SECONDS = 120.0
STEP = "measure writes since backup"
BOOKKEEPING = frozenset({"alembic_version"})


@dataclass(frozen=True)
class TableWrites:
    table: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.deleted

    def describe(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.inserted, "inserted"), (self.updated, "updated"),
                                               (self.deleted, "deleted")) if n]
        return f"{self.table} ({', '.join(parts)})"


@dataclass(frozen=True)
class WrittenSince:
    backup_tag: str
    taken_at: str  # when the backup was taken, as people read it
    tables: list[TableWrites] = field(default_factory=list)
    unknown: str = ""  # why nothing could be said (the comparison failed or ran out of time)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def loses_data(self) -> bool:
        return bool(self.unknown) or self.rows > 0

    def describe(self) -> str:
        if self.unknown:
            return (f"what was written since backup {self.backup_tag} ({self.taken_at}) is unknown ({self.unknown}): "
                    "restoring it may discard data")
        if not self.rows:
            return f"nothing was written since backup {self.backup_tag} ({self.taken_at}): restoring it loses nothing"
        return (f"restoring backup {self.backup_tag} would discard {self.rows} row{'s' if self.rows != 1 else ''} "
                f"written since {self.taken_at}: " + "; ".join(t.describe() for t in self.tables if t.rows))


def taken_at(manifest_created: str, tag: str) -> str:
    try:
        return datetime.fromisoformat(manifest_created).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return tag


def compare(live: Engine, backup: Engine, deadline: float) -> list[TableWrites]:
    """Per table, the rows of `live` that a restore of `backup` would change (see the module's doc)."""
    live_tables = set(inspect(live).get_table_names()) - BOOKKEEPING
    backup_tables = set(inspect(backup).get_table_names()) - BOOKKEEPING
    found = []
    for name in sorted(live_tables):
        if name not in backup_tables:
            with live.connect() as conn:
                count = int(conn.execute(select(text("count(*)")).select_from(table_clause(name))).scalar_one())
            found.append(TableWrites(name, inserted=count))
            continue
        found.append(_table(live, backup, name, deadline))
    return found


def _table(live: Engine, backup: Engine, name: str, deadline: float) -> TableWrites:
    described = inspect(live).get_columns(name)
    live_columns = [c["name"] for c in described]
    backup_columns = {c["name"] for c in inspect(backup).get_columns(name)}
    common = [c for c in live_columns if c in backup_columns]
    # A column the backup lacks holds, where it is not empty, what was written since it was added; one
    # with a default holds the default everywhere, which a restore loses without anyone having written it.
    added = [c["name"] for c in described if c["name"] not in backup_columns and c.get("nullable", True)
             and c.get("default") is None]
    key = inspect(backup).get_pk_constraint(name).get("constrained_columns") or []
    if not key or not set(key) <= set(common):
        key = ["rowid"] if live.dialect.name == "sqlite" else []
    before = _rows(backup, name, key, common, deadline)
    inserted = updated = 0
    seen: set[object] = set()
    for identity, digest, filled in _iter_rows(live, name, key, common, deadline, added):
        if key:
            old = before.get(identity)
            if old is None:
                inserted += 1
            elif old != digest or filled:
                updated += 1
            seen.add(identity)
        else:  # no key: rows compared as a multiset; a changed row counts as one deleted and one inserted
            if before.get(digest, 0) and not filled:
                before[digest] -= 1  # type: ignore[operator]
            else:
                inserted += 1
    deleted = (len([k for k in before if k not in seen]) if key
               else sum(int(n) for n in before.values()))  # type: ignore[call-overload]
    return TableWrites(name, inserted, updated, deleted)


def _rows(engine: Engine, name: str, key: list[str], columns: list[str], deadline: float) -> dict[object, object]:
    rows: dict[object, object] = {}
    for identity, digest, _ in _iter_rows(engine, name, key, columns, deadline):
        if key:
            rows[identity] = digest
        else:
            rows[digest] = int(rows.get(digest, 0)) + 1  # type: ignore[call-overload]
    return rows


def _iter_rows(engine: Engine, name: str, key: list[str], columns: list[str], deadline: float,
               added: list[str] | None = None) -> Iterator[tuple[object, str, bool]]:
    """Each row's key, a digest of `columns`, and whether any of the `added` columns holds a value."""
    added = added or []
    selected = [column_clause(c) for c in (*key, *columns, *added)]
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            select(*selected).select_from(table_clause(name)))
        for i, row in enumerate(result):
            if i % 5000 == 0 and time.monotonic() > deadline:
                raise TimeoutError(f"comparing {name} took longer than {COMPARE_SECONDS:.0f} s")
            identity = tuple(row[: len(key)])
            values = tuple(row[len(key): len(key) + len(columns)])
            filled = any(v is not None for v in row[len(key) + len(columns):])
            yield identity, hashlib.blake2b(repr(values).encode(), digest_size=16).hexdigest(), filled


@contextmanager
def _backup_engine(url: str, directory: Path, tag: str, workdir: Path, pg_restore: str,
                   lock_timeout_ms: int) -> Iterator[Engine]:
    """The backup, readable: the SQLite file itself (read-only), or the archive restored into a scratch
    database beside the live one."""
    manifest = load_manifest(directory, tag)
    path = verify_file(directory, manifest)
    if manifest.kind == "sqlite":
        engine = connect(f"sqlite:///{path}", read_only=True)
        try:
            yield engine
        finally:
            engine.dispose()
        return
    with empty_database(url, workdir, "since", STEP, lock_timeout_ms) as scratch:
        parsed = make_url(scratch)
        with postgres.passfile(parsed, session_name("since")) as env:
            argv = [pg_restore, *postgres.connection_args(parsed), "--no-owner", "--exit-on-error",
                    "--dbname", parsed.database or "", str(path)]
            run(Command.of(argv, env=env, timeout=COMPARE_SECONDS, name="pg_restore"), step=STEP, error=BackupFailed,
                advice=Advice(start="check backups.pg_restore", slow="the backup is large: compare it by hand",
                              failed="the backup could not be read back; compare it by hand before restoring"))
        engine = connect(scratch, session_name("since"), read_only=True)
        try:
            yield engine
        finally:
            engine.dispose()


def writes_since(url: str, directory: Path, tag: str, *, workdir: Path, pg_restore: str = "pg_restore",
                 lock_timeout_ms: int = 5000) -> WrittenSince:
    """What restoring backup `tag` of `directory` over the database at `url` would discard."""
    manifest = load_manifest(directory, tag)
    when = taken_at(manifest.created_at, tag)
    deadline = time.monotonic() + COMPARE_SECONDS
    live = connect(url, session_name("since"), lock_timeout_ms, read_only=True)
    try:
        with _backup_engine(url, directory, tag, workdir, pg_restore, lock_timeout_ms) as backup:
            return WrittenSince(tag, when, compare(live, backup, deadline))
    except (SQLAlchemyError, TimeoutError, BackupFailed) as exc:
        cause = exc.cause if isinstance(exc, BackupFailed) else str(exc).splitlines()[0]
        return WrittenSince(tag, when, unknown=redact(cause)[:200])
    finally:
        live.dispose()


@read_step("measure-writes-since-backup", retries=0)
def measure_writes_since_backup(config: EnvironmentConfig, tag: str) -> WrittenSince:
    """Rollback, before any restore: what restoring backup `tag` would discard."""
    if not (config.backups.directory / tag).exists():
        raise RollbackFailed(STEP, f"backup {tag} is not in {config.backups.directory}", "restore by hand")
    return writes_since(resolve_database_url(config), config.backups.directory, tag,
                        workdir=config.state_dir / "since-backup", pg_restore=config.backups.pg_restore,
                        lock_timeout_ms=config.database.lock_timeout_ms)
