"""Who is using the app: requests carrying ``X-User-Id`` refresh that user's ``user_sessions`` row."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from jobapp.models import UserSession, utcnow

ACTIVE_WINDOW = timedelta(minutes=5)
# One write per user per minute per worker keeps busy users from turning every request into a write.
WRITE_INTERVAL_SECONDS = 60.0
MAX_USER_ID_LENGTH = 128
# Forget throttle entries beyond this many users so the map cannot grow without bound.
MAX_TRACKED_USERS = 10_000

log = logging.getLogger(__name__)


class ActivityRecorder:
    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = sessions
        self._clock = clock
        self._last_written: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, user_id: str) -> bool:
        """Refresh ``user_id``'s last_seen unless this worker did so within the interval."""
        now = self._clock()
        with self._lock:
            last = self._last_written.get(user_id)
            if last is not None and now - last < WRITE_INTERVAL_SECONDS:
                return False
            if len(self._last_written) >= MAX_TRACKED_USERS:
                self._forget_before(now - WRITE_INTERVAL_SECONDS)
            self._last_written[user_id] = now
        try:
            with self._sessions.begin() as session:
                touch_user(session, user_id, utcnow())
        except SQLAlchemyError:
            with self._lock:
                self._last_written.pop(user_id, None)
            raise
        return True

    def _forget_before(self, cutoff: float) -> None:
        self._last_written = {user: at for user, at in self._last_written.items() if at >= cutoff}
        if len(self._last_written) >= MAX_TRACKED_USERS:
            self._last_written.clear()


def touch_user(session: Session, user_id: str, seen: datetime) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg_insert = postgresql.insert(UserSession).values(user_id=user_id, last_seen=seen)
        session.execute(
            pg_insert.on_conflict_do_update(
                index_elements=[UserSession.user_id], set_={"last_seen": pg_insert.excluded.last_seen}
            )
        )
    elif dialect == "sqlite":
        lite_insert = sqlite.insert(UserSession).values(user_id=user_id, last_seen=seen)
        session.execute(
            lite_insert.on_conflict_do_update(
                index_elements=[UserSession.user_id], set_={"last_seen": lite_insert.excluded.last_seen}
            )
        )
    else:
        session.merge(UserSession(user_id=user_id, last_seen=seen))


def count_active_users(session: Session, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - ACTIVE_WINDOW
    return (
        session.scalar(select(func.count()).select_from(UserSession).where(UserSession.last_seen >= cutoff))
        or 0
    )


class ActivityMiddleware:
    def __init__(self, app: ASGIApp, recorder: ActivityRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            user_id = _user_id(scope)
            if user_id:
                try:
                    await run_in_threadpool(self.recorder.record, user_id)
                except SQLAlchemyError:
                    # Activity is bookkeeping: losing one update must not fail the user's request.
                    log.warning("could not record activity of user %r", user_id, exc_info=True)
        await self.app(scope, receive, send)


def _user_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-user-id":
            user_id: str = value.decode("latin-1").strip()
            if 0 < len(user_id) <= MAX_USER_ID_LENGTH:
                return user_id
            return None
    return None
