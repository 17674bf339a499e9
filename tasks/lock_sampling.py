"""What each migration holds while it runs on the rehearsal's copy of the database.

The rehearsal upgrades the copy one revision at a time and reports each one's window (start and end,
wall clock). On PostgreSQL a thread samples `pg_locks` on the copy meanwhile, every SAMPLE_SECONDS: on
a scratch copy every lock but the sampler's own is the migration's. Per revision the strongest lock
seen on a table that existed before the rehearsal (a table the migration creates blocks nobody), for
how long it was seen held, how many rows that table holds, and which tables it rewrote (their storage
file replaced: a changed column type, a volatile default), seen as their relfilenode changes. On SQLite a migration's transaction
takes the whole database's write lock, for as long as the revision runs.

Sampling sees what lasts longer than one interval; a revision over sooner is reported as such
("no lock blocking writes seen"), never as lock-free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tasks.databases import connect, session_name

SAMPLE_SECONDS = 0.02
COMMIT_SLACK = 0.05  # a revision's commit comes at most this long before its window's recorded end

# PostgreSQL's table lock modes, weakest first; from SHARE on, writes to the table wait.
MODES = ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
         "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
BLOCKS_WRITES = MODES.index("ShareLock")
BLOCKS_READS = MODES.index("AccessExclusiveLock")


def mode_name(mode: str) -> str:
    """AccessExclusiveLock -> ACCESS EXCLUSIVE, as PostgreSQL's documentation names it."""
    words = "".join(f" {c}" if c.isupper() else c for c in mode.removesuffix("Lock")).split()
    return " ".join(words).upper()


@dataclass(frozen=True)
class HeldLock:
    table: str
    mode: str  # as pg_locks names it; "write lock" for SQLite's database lock
    seconds: float
    rows: int | None = None

    @property
    def blocks_writes(self) -> bool:
        return self.mode not in MODES or MODES.index(self.mode) >= BLOCKS_WRITES

    def describe(self) -> str:
        rows = f" ({self.rows} row{'' if self.rows == 1 else 's'})" if self.rows is not None else ""
        if self.mode not in MODES:
            return f"the database's {self.mode} for {self.seconds:.2f} s{rows}"
        return f"{mode_name(self.mode)} on {self.table} for {self.seconds:.2f} s{rows}"


@dataclass(frozen=True)
class RevisionMeasure:
    revision: str
    seconds: float
    lock: HeldLock | None  # the strongest seen, None: none seen
    rewrote: tuple[str, ...] = ()  # tables it wrote anew (their storage replaced: a type change, a volatile default)

    @property
    def blocking_seconds(self) -> float:
        """How long it held a lock under which the app's writes wait."""
        return self.lock.seconds if self.lock is not None and self.lock.blocks_writes else 0.0

    def describe(self) -> str:
        if self.lock is None:
            return (f"{self.revision}: {self.seconds:.2f} s, no lock on an existing table seen "
                    f"(sampled every {SAMPLE_SECONDS * 1000:.0f} ms)")
        rewrote = f", rewrote {', '.join(self.rewrote)}" if self.rewrote else ""
        return f"{self.revision}: {self.lock.describe()}{rewrote}, {self.seconds:.2f} s in all"


@dataclass(frozen=True)
class _Sample:
    at: float
    table: str
    mode: str


class LockSampler:
    """Samples the locks other sessions hold on the tables of one PostgreSQL database."""

    def __init__(self, url: str, lock_timeout_ms: int) -> None:
        self.engine = connect(url, session_name("lock-sampler"), lock_timeout_ms, read_only=True)
        self.samples: list[_Sample] = []
        self.rewrites: list[tuple[float, float, str]] = []  # a table's storage replaced between two samples
        self.error: str | None = None
        self._stop = threading.Event()
        with self.engine.connect() as conn:
            self.tables: dict[int, str] = {int(oid): str(name) for oid, name in conn.execute(text(
                "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%' AND c.relname <> 'alembic_version'"))}  # bookkeeping
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def _run(self) -> None:
        query = text("SELECT relation, mode FROM pg_locks WHERE locktype = 'relation' AND granted "
                     "AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database "
                     "WHERE datname = current_database())")
        storage = text("SELECT oid, relfilenode FROM pg_class WHERE oid = ANY(:oids)")
        oids = list(self.tables)
        try:
            with self.engine.connect() as conn:
                files = {int(oid): int(node) for oid, node in conn.execute(storage, {"oids": oids})}
                conn.rollback()
                previous = time.time()
                while not self._stop.is_set():
                    now = time.time()
                    for relation, mode in conn.execute(query):
                        name = self.tables.get(int(relation))
                        if name is not None:
                            self.samples.append(_Sample(now, name, str(mode)))
                    # A rewrite replaces the table's file; it shows once the revision's transaction commits.
                    for oid, node in conn.execute(storage, {"oids": oids}):
                        if files.get(int(oid)) != int(node):
                            files[int(oid)] = int(node)
                            self.rewrites.append((previous, time.time(), self.tables[int(oid)]))
                    previous = now
                    conn.rollback()  # a fresh snapshot of pg_locks each time
                    self._stop.wait(SAMPLE_SECONDS)
        except SQLAlchemyError as exc:
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def rows(self, table: str) -> int | None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SET statement_timeout = '3s'"))
                return int(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())
        except SQLAlchemyError:
            return None

    def measure(self, windows: list[dict[str, Any]]) -> list[RevisionMeasure]:
        # A rewrite shows at the first sample after its commit, which fell between that sample and the one
        # before; a revision commits as its window ends (within COMMIT_SLACK of it). A rewrite is given to a
        # revision only when that revision's commit alone can fall in the span, and none of the rehearsal's
        # downgrade (after `until`) can: one a slow sampler cannot place is not claimed.
        end = float(windows[-1].get("until", windows[-1]["ended"])) if windows else 0.0
        rewrote: dict[int, set[str]] = {}
        for before, seen, table in self.rewrites:
            meets = [i for i, w in enumerate(windows)
                     if float(w["ended"]) >= before and float(w["ended"]) - COMMIT_SLACK <= seen]
            if len(meets) == 1 and seen <= end:
                rewrote.setdefault(meets[0], set()).add(table)
        measures = []
        for i, window in enumerate(windows):
            began, ended = float(window["started"]), float(window["ended"])
            inside = [s for s in self.samples if began <= s.at <= ended]
            measures.append(RevisionMeasure(str(window["revision"]), ended - began,
                                            self._strongest(inside, ended - began), tuple(sorted(rewrote.get(i, ())))))
        return measures

    def _strongest(self, inside: list[_Sample], limit: float) -> HeldLock | None:
        best: tuple[int, float, str, str] | None = None
        for table in {s.table for s in inside}:
            seen = [s for s in inside if s.table == table]
            mode = max((s.mode for s in seen), key=lambda m: MODES.index(m) if m in MODES else -1)
            times = [s.at for s in seen if s.mode == mode]
            held = min(limit, max(times) - min(times) + SAMPLE_SECONDS)
            key = (MODES.index(mode) if mode in MODES else -1, held, table, mode)
            best = key if best is None or key[:2] > best[:2] else best
        if best is None:
            return None
        return HeldLock(best[2], best[3], round(best[1], 3), self.rows(best[2]))

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def sampling_locks(url: str, lock_timeout_ms: int) -> Iterator[LockSampler | None]:
    """A running sampler on a PostgreSQL copy (None for SQLite: its lock is the whole database's)."""
    if make_url(url).get_backend_name() != "postgresql":
        yield None
        return
    sampler = LockSampler(url, lock_timeout_ms)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()
        sampler.close()


def sqlite_measures(windows: list[dict[str, Any]]) -> list[RevisionMeasure]:
    """On SQLite a revision's transaction holds the database's write lock from its first change to its end."""
    return [RevisionMeasure(str(w["revision"]), float(w["ended"]) - float(w["started"]),
                            HeldLock("the database", "write lock", round(float(w["ended"]) - float(w["started"]), 3)))
            for w in windows]
