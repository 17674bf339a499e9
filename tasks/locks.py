"""The deploy lock: one deploy or rollback per environment at a time.

A deployment's own `concurrency_limit` is not enough: a run paused for approval gives its slot back.
So the mutating part of a deploy, approvals included, holds the slot of the global concurrency limit
`deploy-<environment>` (limit 1) under a lease that a thread renews while the run lives. A run
that dies stops renewing, and its lease lapses within LEASE_SECONDS; a rollback of a crashed run
does not wait for that: the ledger holds the dead run's lease id, and the rollback revokes it.

A second deploy waits `wait_seconds` at most, then fails naming the run that holds the lock: its
name, id and page in the Prefect UI.

Why not `prefect.concurrency.sync.concurrency(..., lease_duration=, strict=True)`: it renews its lease
but never says the lease's id, so a rollback could not revoke a crashed run's lease and would wait up to
a lease for the lock; and its timeout cannot name the holder. The acquire, renew and revoke below are
the same client calls it makes, with the id kept in the ledger.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import httpx

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.utilities.urls import url_for

from deployments.errors import LockHeld
from records.ledger import Ledger, Release, utcnow
from tasks.waiting import wait_until

LEASE_SECONDS = 60  # the shortest lease Prefect accepts: a dead holder's slot frees within a minute
LOCKED = 423


def lock_name(environment: str) -> str:
    return f"deploy-{environment}"


def ensure_lock(environment: str) -> None:
    name = lock_name(environment)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def deploy_lock(environment: str, ledger: Ledger, release_id: int, wait_seconds: float = 5.0,
                holder_run_id: str | None = None) -> Iterator[None]:
    ensure_lock(environment)
    lease_id = _acquire(environment, ledger, release_id, wait_seconds, holder_run_id)
    ledger.update(release_id, lock_acquired_at=utcnow(), lock_lease_id=str(lease_id))
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease_id, stop), name=f"deploy-lock-{environment}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        _release(lease_id)
        ledger.update(release_id, lock_lease_id=None)


def release_dead_holder(ledger: Ledger, release: Release) -> bool:
    """Revoke the lease of a run that died holding the lock (its ledger row says which)."""
    if not release.lock_lease_id:
        return False
    _release(UUID(release.lock_lease_id))
    ledger.update(release.id, lock_lease_id=None)
    return True


def _acquire(environment: str, ledger: Ledger, release_id: int, wait_seconds: float,
             holder_run_id: str | None) -> UUID:
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(holder_run_id)) if holder_run_id else None
    with get_client(sync_client=True) as client:

        def lease() -> UUID | None:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    [lock_name(environment)], 1, "concurrency", LEASE_SECONDS, holder)
                return UUID(response.json()["lease_id"])
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != LOCKED:
                    raise
            return None

        def held() -> LockHeld:
            return LockHeld(f"acquire deploy lock ({environment})",
                            f"{environment} is held by {_holder(ledger, environment, release_id)}",
                            "wait for it to finish, or cancel it in the Prefect UI; nothing was changed")

        return wait_until(lease, wait_seconds, f"the deploy lock of {environment}", interval=1.0, on_timeout=held)


def _renew(lease_id: UUID, stop: threading.Event) -> None:
    while not stop.wait(LEASE_SECONDS / 4):
        try:
            with get_client(sync_client=True) as client:
                client.renew_concurrency_lease(lease_id, LEASE_SECONDS)
        except (httpx.HTTPError, OSError):  # the API answering an error, or not answering at all
            continue  # a missed renewal is retried; the lease outlives three of them


def _release(lease_id: UUID) -> None:
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def _holder(ledger: Ledger, environment: str, release_id: int) -> str:
    holders = [r for r in ledger.running(environment) if r.id != release_id and r.lock_acquired_at is not None]
    if not holders:
        return (f"a run that is not in the ledger, or one that died: its lease lapses within {LEASE_SECONDS} s "
                "of its death")
    return ", ".join(describe_holder(r) for r in holders)


def describe_holder(holder: Release) -> str:
    """A holder by its run's name, id and page in the UI: two deploys of one ref share a run name (the
    waiting one would read its own), never an id. A deploy's run name says its ref (and, once
    resolved, its SHA): the ref is not repeated then."""
    name = holder.flow_run_name or holder.ref
    ref = "" if holder.ref in name else f"{holder.ref}, "
    since = f"since {holder.lock_acquired_at:%Y-%m-%d %H:%M:%S} UTC, {holder.phase}"
    if not holder.flow_run_id:
        return f"run {name} ({ref}not a Prefect flow run; {since})"
    url = run_url(holder.flow_run_id)
    return f"run {name} ({ref}id {holder.flow_run_id}" + (f", {url}" if url else "") + f"; {since})"


def run_url(flow_run_id: str) -> str | None:
    """The run's page in the Prefect UI; None when no UI URL is known (no PREFECT_API_URL or PREFECT_UI_URL)."""
    return url_for("flow-run", obj_id=flow_run_id)
