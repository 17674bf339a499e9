"""Outgoing email. Messages are queued in the ``outbox`` table; a separate sender delivers them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobapp.models import OutboxMessage

QUEUED = "queued"


def queue_email(session: Session, recipient: str, subject: str, body: str) -> OutboxMessage:
    message = OutboxMessage(recipient=recipient, subject=subject, body=body, status=QUEUED)
    session.add(message)
    session.flush()
    return message


def check_outbox(session: Session) -> str:
    queued = session.scalar(
        select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == QUEUED)
    )
    return f"outbox reachable; {queued} message(s) queued"
