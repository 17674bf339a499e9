"""The release ledger: what each deploy did, step by step, so rollback, the watch, `deployctl status`
and the DORA figures can rely on it rather than on memory.

A release row is written when a deploy starts and updated as it goes; its `outcome` is one of
OUTCOMES. Once it leaves `running` only a rollback changes it again (to rolled_back or
rollback_failed). Failed releases are never rollback targets.
SQLite in the environment's state directory by default (WAL, so the deploy, its hooks and the
rollback can write from separate processes); any SQLAlchemy URL in `DEPLOY_LEDGER_URL` instead (a
fleet's workers on several machines all write to one, e.g. on PostgreSQL). Its schema
is kept by Alembic migrations of its own (records/ledger_migrations), applied when it is opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import JSON, Boolean, DateTime, Integer, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from records import ledger_migrations

OUTCOMES = ("running", "succeeded", "failed", "aborted", "rolled_back", "rollback_failed", "noop")
TERMINAL = frozenset(OUTCOMES) - {"running"}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Release(Base):
    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment: Mapped[str] = mapped_column(String(40), index=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    flow_run_name: Mapped[str | None] = mapped_column(String(200))
    ref: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    target_sha: Mapped[str | None] = mapped_column(String(40))
    previous_sha: Mapped[str | None] = mapped_column(String(40))
    commit_time: Mapped[datetime | None]
    db_revision_before: Mapped[str | None] = mapped_column(String(64))
    db_revision_after: Mapped[str | None] = mapped_column(String(64))
    # With [dependencies]: the key of the Python environment live before the deploy, and of its own.
    environment_before: Mapped[str | None] = mapped_column(String(64))
    environment_after: Mapped[str | None] = mapped_column(String(64))
    backup_tag: Mapped[str | None] = mapped_column(String(80))
    backup_manifest: Mapped[dict[str, Any] | None]
    approvals: Mapped[list[Any]] = mapped_column(JSON, default=list)
    phase: Mapped[str] = mapped_column(String(40), default="prerequisites")
    code_changed: Mapped[bool] = mapped_column(Boolean, default=False)
    migration_started: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str] = mapped_column(String(20), default="running", index=True)
    failed_step: Mapped[str | None] = mapped_column(String(80))
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    baseline: Mapped[dict[str, Any] | None]
    migrations: Mapped[list[Any]] = mapped_column(JSON, default=list)
    checks: Mapped[list[Any]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    restored_at: Mapped[datetime | None]
    lock_acquired_at: Mapped[datetime | None]
    lock_lease_id: Mapped[str | None] = mapped_column(String(36))
    rollback_of: Mapped[int | None] = mapped_column(Integer)
    watch: Mapped[dict[str, Any] | None]


class Step(Base):
    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: str
    detail: str
    seconds: float | None


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        with self.engine.begin() as connection:
            ledger_migrations.upgrade(connection)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> Ledger:
        """This process's ledger of the state directory: opened, and migrated, on the first call only.

        A deploy asks for it at every phase; an engine and a schema check each time cost more than
        the steps they record. A file removed or replaced since (tests do both) is opened afresh.
        """
        url = os.environ.get(LEDGER_URL_VARIABLE, "").strip()
        if url:  # a fleet's hosts all write to one ledger they reach, e.g. on PostgreSQL
            with _opened_lock:
                shared = _shared.get(url)
                if shared is None:
                    shared = _shared[url] = cls(url)
                return shared
        state_dir.mkdir(parents=True, exist_ok=True)
        path = (state_dir / "ledger.db").resolve()
        with _opened_lock:
            opened = _opened.get(path)
            if opened is not None:
                if opened.file == _file_identity(path):
                    return opened.ledger
                # Its pooled connections still hold what was removed.
                opened.ledger.engine.dispose()
            ledger = cls(f"sqlite:///{path}")
            _opened[path] = _Opened(ledger, _file_identity(path))
            return ledger

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def open_release(self, **fields: Any) -> Release:
        with self._session() as session:
            release = Release(**fields)
            session.add(release)
            session.commit()
            return release

    def update(self, release_id: int, **fields: Any) -> Release:
        with self._session() as session:
            release = session.get_one(Release, release_id)
            for name, value in fields.items():
                setattr(release, name, value)
            session.commit()
            return release

    def finish(self, release_id: int, outcome: str, step: str | None = None, error: str | None = None) -> Release:
        if outcome not in TERMINAL:
            raise ValueError(f"{outcome!r} is not a terminal outcome")
        fields: dict[str, Any] = {"outcome": outcome, "finished_at": utcnow()}
        if step is not None:
            fields["failed_step"] = step
        if error is not None:
            fields["error"] = error
        return self.update(release_id, **fields)

    def get(self, release_id: int) -> Release:
        with self._session() as session:
            return session.get_one(Release, release_id)

    def by_flow_run(self, flow_run_id: str) -> Release | None:
        with self._session() as session:
            return session.scalars(select(Release).where(Release.flow_run_id == flow_run_id)
                                   .order_by(Release.id.desc())).first()

    def releases(self, environment: str, limit: int = 10, include_dry_runs: bool = False) -> list[Release]:
        query = select(Release).where(Release.environment == environment, Release.rollback_of.is_(None))
        if not include_dry_runs:
            query = query.where(Release.dry_run.is_(False))
        with self._session() as session:
            return list(session.scalars(query.order_by(Release.id.desc()).limit(limit)))

    def history(self, environment: str, limit: int = 10) -> list[Release]:
        """Every run's row, deploys (dry runs too) and rollbacks alike, newest first."""
        query = select(Release).where(Release.environment == environment).order_by(Release.id.desc()).limit(limit)
        with self._session() as session:
            return list(session.scalars(query))

    def last_succeeded(self, environment: str, before_id: int | None = None) -> Release | None:
        query = select(Release).where(Release.environment == environment, Release.outcome == "succeeded",
                                      Release.dry_run.is_(False), Release.rollback_of.is_(None))
        if before_id is not None:
            query = query.where(Release.id < before_id)
        with self._session() as session:
            return session.scalars(query.order_by(Release.id.desc())).first()

    def running(self, environment: str) -> list[Release]:
        with self._session() as session:
            return list(session.scalars(select(Release).where(
                Release.environment == environment, Release.outcome == "running").order_by(Release.id)))

    def step_started(self, release_id: int, name: str) -> int:
        with self._session() as session:
            step = Step(release_id=release_id, name=name, status="running")
            session.add(step)
            session.commit()
            return step.id

    def step_finished(self, step_id: int, status: str, detail: Any = "") -> None:
        with self._session() as session:
            step = session.get_one(Step, step_id)
            step.status = status
            step.detail = detail if isinstance(detail, str) else json.dumps(detail, default=str)
            step.finished_at = utcnow()
            session.commit()

    def steps(self, release_id: int) -> list[StepRecord]:
        with self._session() as session:
            rows = session.scalars(select(Step).where(Step.release_id == release_id).order_by(Step.id))
            return [StepRecord(s.name, s.status, s.detail, _seconds(s.started_at, s.finished_at)) for s in rows]

    def step_started_at(self, release_id: int, name: str) -> datetime | None:
        """When the release's first step called `name` started (aware, UTC), or None if it never did."""
        with self._session() as session:
            moment = session.scalar(select(Step.started_at).where(Step.release_id == release_id, Step.name == name)
                                    .order_by(Step.id).limit(1))
        return _aware(moment) if moment is not None else None

    def all_releases(self, environment: str) -> Iterator[Release]:
        with self._session() as session:
            yield from session.scalars(select(Release).where(Release.environment == environment)
                                       .order_by(Release.id))


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((_aware(end) - _aware(start)).total_seconds(), 3)


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class _Opened:
    ledger: Ledger
    file: tuple[int, int] | None


LEDGER_URL_VARIABLE = "DEPLOY_LEDGER_URL"
_opened: dict[Path, _Opened] = {}
_shared: dict[str, Ledger] = {}
_opened_lock = threading.Lock()


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _forget_the_parents_ledgers() -> None:
    # SQLAlchemy's pools are not fork-safe: a child must open connections of its own, and leave the
    # parent's alone (close=False) rather than close them under the parent. The lock is new too, in
    # case another thread of the parent held it at the fork.
    global _opened_lock
    for opened in _opened.values():
        opened.ledger.engine.dispose(close=False)
    for ledger in _shared.values():
        ledger.engine.dispose(close=False)
    _opened.clear()
    _shared.clear()
    _opened_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_the_parents_ledgers)


BUSY_SECONDS = 30


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            _switch_to_wal(cursor)
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    # WAL is kept in the file, so only a new ledger's first openers get here. SQLite answers a journal
    # mode change that races another opener's with "database is locked" at once, without waiting
    # through busy_timeout: so it is retried here, for as long as busy_timeout would have waited.
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(
                    f"opening the ledger: could not switch it to WAL within {BUSY_SECONDS} s, another"
                    " process holding the file locked all that time; find it with `fuser` on the ledger"
                    " file and try again") from error
            time.sleep(0.02)
