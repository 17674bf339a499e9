"""The deploy lock: one deploy or rollback per environment at a time.

A deployment's own `concurrency_limit` is not enough: a run paused for approval gives its slot back.
So the mutating part of a deploy, approvals included, holds a slot of the global concurrency limit
`deploy-<environment>` (limit 1). Slots are leases: if the holder dies, the lease lapses and the slot
frees itself. A second deploy waits a few seconds at most, then fails naming the run that holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from deployments.errors import LockHeld
from tasks.ledger import Ledger

LEASE_SECONDS = 60  # the shortest lease Prefect accepts: a dead holder's slot frees within a minute


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
def deploy_lock(environment: str, ledger: Ledger, release_id: int, wait_seconds: float = 5.0) -> Iterator[None]:
    ensure_lock(environment)
    with ExitStack() as stack:
        try:
            stack.enter_context(concurrency(lock_name(environment), occupy=1, timeout_seconds=wait_seconds,
                                            lease_duration=LEASE_SECONDS, strict=True))
        except TimeoutError:
            holders = [r for r in ledger.running(environment) if r.id != release_id]
            who = ", ".join(f"run {r.flow_run_name or r.flow_run_id} ({r.ref}, started "
                            f"{r.started_at:%Y-%m-%d %H:%M:%S} UTC, {r.phase})" for r in holders) or "another run"
            raise LockHeld(f"acquire deploy lock ({environment})", f"{environment} is held by {who}",
                           "wait for it to finish, or cancel it in the Prefect UI; nothing was changed") from None
        yield
