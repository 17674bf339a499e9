"""Waits on PostgreSQL locks: bounded, said in the run log within seconds, and named when they fail.

Every session the orchestrator opens and every PostgreSQL tool it starts carries
`application_name=deploy-<run>` (`tasks.databases.session_name`), so its sessions can be found. While a step talks to
PostgreSQL, `watching_lock_waits` looks every second for one of those sessions waiting on a lock; the
first time it sees one it logs who holds the lock (pid, application, user, since when, what it runs).
A wait longer than the bound is ended by cancelling the waiting statement, even for a tool that
turned its own `lock_timeout` off (`pg_dump` and `pg_restore` scripts do), and the step then fails
with one line naming the holder (`LockWaitTimeout`). So no step that holds the deploy lock can stall
on somebody else's transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tasks.databases import connect

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Holder:
    """A session that holds a lock one of ours waits for."""

    pid: int
    application: str
    user: str
    state: str
    since: datetime | None
    query: str

    def describe(self) -> str:
        since = f", in its transaction since {self.since:%H:%M:%S}" if self.since else ""
        app = self.application or "no application_name"
        return f"session {self.pid} ({app}, user {self.user}, {self.state}{since}: {self.query!r})"


@dataclass(frozen=True)
class LockWait:
    pid: int
    relation: str
    holders: tuple[Holder, ...]

    def describe(self) -> str:
        held = "; ".join(h.describe() for h in self.holders) or "a session that has gone since"
        return f"a lock on {self.relation} held by {held}"


@dataclass
class LockWatch:
    """What the watch saw: the last wait, and whether it ended one by cancelling it."""

    waits: dict[int, float] = field(default_factory=dict)  # our waiting pid -> when first seen
    said: set[tuple[str, tuple[int, ...]]] = field(default_factory=set)  # (relation, holders) logged
    seen: LockWait | None = None
    cancelled: LockWait | None = None


_WAITING = text("""
    SELECT w.pid, coalesce((SELECT l.relation::regclass::text FROM pg_locks l
                            WHERE l.pid = w.pid AND NOT l.granted AND l.relation IS NOT NULL LIMIT 1),
                           'a database object') AS relation,
           pg_blocking_pids(w.pid) AS blockers
    FROM pg_stat_activity w
    WHERE w.application_name LIKE :name AND w.wait_event_type = 'Lock' AND w.pid <> pg_backend_pid()
""")
_HOLDERS = text("""
    SELECT pid, coalesce(application_name, ''), coalesce(usename::text, '?'), coalesce(state, '?'), xact_start,
           left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 160)
    FROM pg_stat_activity WHERE pid = ANY(:pids)
""")


@contextmanager
def watching_lock_waits(url: str, application_name: str, step: str, bound_seconds: float,
                        logger: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> Iterator[LockWatch]:
    """While the block runs, watch the sessions named `application_name*` (our own, and tools we start
    with that name) for lock waits: log the first sight of each, cancel one that lasts `bound_seconds`.
    A SQLite URL, or a database the watch cannot reach, watches nothing (the step's own errors say why)."""
    watch = LockWatch()
    if make_url(url).get_backend_name() != "postgresql":
        yield watch
        return

    stop = threading.Event()
    engine = connect(url, application_name="deploy-lock-watch", lock_timeout_ms=1000, statement_timeout_ms=5000)

    def run() -> None:
        try:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                while not stop.wait(POLL_SECONDS):
                    _look(conn, watch, application_name, step, bound_seconds, logger)
        except SQLAlchemyError as exc:  # the step reports its own connection problems
            logger.debug("lock watch of %s stopped: %s", step, exc)

    thread = threading.Thread(target=run, name=f"lock-watch-{step}", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=10)
        engine.dispose()


def _look(conn, watch: LockWatch, application_name: str, step: str, bound_seconds: float,  # type: ignore[no-untyped-def]
          logger: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
    now = time.monotonic()
    waiting = conn.execute(_WAITING, {"name": f"{application_name}%"}).all()
    current = {row.pid for row in waiting}
    watch.waits = {pid: since for pid, since in watch.waits.items() if pid in current}
    for row in waiting:
        first = row.pid not in watch.waits
        since = watch.waits.setdefault(row.pid, now)
        wait = LockWait(row.pid, row.relation, _holders(conn, list(row.blockers or [])))
        watch.seen = wait
        said = (wait.relation, tuple(sorted(h.pid for h in wait.holders)))
        if first and said not in watch.said:
            watch.said.add(said)
            logger.warning("%s is waiting for %s; it waits at most %g s", step, wait.describe(), bound_seconds)
        elif now - since >= bound_seconds and watch.cancelled is None:
            watch.cancelled = wait
            conn.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": row.pid})
            logger.error("%s waited %.0f s for %s: cancelled", step, now - since, wait.describe())


def _holders(conn, pids: list[int]) -> tuple[Holder, ...]:  # type: ignore[no-untyped-def]
    if not pids:
        return ()
    rows = conn.execute(_HOLDERS, {"pids": pids}).all()
    return tuple(Holder(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows)
