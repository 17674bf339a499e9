"""The deploy lock (tasks/locks.py): its name, how its holder is named (run name, id, page in the UI), who
the ledger says holds it, the bounded wait, and the lease that a thread renews and a rollback revokes.

Without a Prefect server: the pure parts, and the lock's HTTP edge cases against a stand-in API on
loopback that answers the concurrency endpoints with fixed statuses (423 Locked for a held lock).
With the real test server (slow): what the ledger records of a lease, and a dead holder's lease
revoked so the next deploy proceeds at once. A second deploy refused while the lock is held, naming
its holder, is tests/flows/test_production_deployment.py and tests/faults/test_run_log.py."""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

import tasks.locks
from deployments.errors import LockHeld
from records.ledger import Ledger, Release
from tasks.locks import LEASE_SECONDS, deploy_lock, describe_holder, lock_name, release_dead_holder, run_url
from tests.conftest import free_ports
from tests.webhook import serving

RUN_ID = "6c1d2a4e-0b7f-4e8e-9d8a-2f3b4c5d6e7f"
UI = "http://127.0.0.1:4200"
SINCE = datetime(2026, 3, 31, 12, 0, 5, tzinfo=timezone.utc)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger.for_state_dir(tmp_path / "state")
    yield book
    book.engine.dispose()


# --- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("environment", "name"), [("production", "deploy-production"), ("staging", "deploy-staging"),
                                                   ("eu-west-2", "deploy-eu-west-2")])
def test_each_environment_has_a_lock_of_its_own(environment: str, name: str) -> None:
    assert lock_name(environment) == name


HOLDERS = [
    pytest.param(dict(ref="v4", flow_run_id=RUN_ID, flow_run_name="production: v4 (3f2a9c1e)"),
                 f"run production: v4 (3f2a9c1e) (id {RUN_ID}, {UI}/runs/flow-run/{RUN_ID}; "
                 "since 2026-03-31 12:00:05 UTC, approvals)",
                 id="a deploy run is named by its run name, id and page, its ref already in its name"),
    pytest.param(dict(ref="v4", flow_run_id=RUN_ID, flow_run_name="brave-otter"),
                 f"run brave-otter (v4, id {RUN_ID}, {UI}/runs/flow-run/{RUN_ID}; "
                 "since 2026-03-31 12:00:05 UTC, approvals)",
                 id="a run whose name does not say its ref has the ref added"),
    pytest.param(dict(ref="v4", flow_run_id=RUN_ID, flow_run_name=None),
                 f"run v4 (id {RUN_ID}, {UI}/runs/flow-run/{RUN_ID}; since 2026-03-31 12:00:05 UTC, approvals)",
                 id="a run without a name is named by its ref"),
    pytest.param(dict(ref="v4", flow_run_id=None, flow_run_name=None),
                 "run v4 (not a Prefect flow run; since 2026-03-31 12:00:05 UTC, approvals)",
                 id="a deploy started outside Prefect says so and has no page"),
]


@pytest.mark.parametrize(("fields", "described"), HOLDERS)
def test_the_holder_is_named_by_run_id_and_page(fields: dict[str, Any], described: str) -> None:
    holder = Release(phase="approvals", lock_acquired_at=SINCE, **fields)
    with temporary_settings({PREFECT_UI_URL: UI}):
        assert describe_holder(holder) == described


def test_the_page_of_a_run_is_where_the_ui_shows_it() -> None:
    with temporary_settings({PREFECT_UI_URL: UI}):
        assert run_url(RUN_ID) == f"{UI}/runs/flow-run/{RUN_ID}"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4300/api"}, restore_defaults={PREFECT_UI_URL}):
        assert run_url(RUN_ID) == f"http://127.0.0.1:4300/runs/flow-run/{RUN_ID}"


def test_without_a_known_ui_the_holder_is_named_without_a_page() -> None:
    holder = Release(ref="v4", flow_run_id=RUN_ID, flow_run_name="production: v4", phase="execution",
                     lock_acquired_at=SINCE)
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        assert run_url(RUN_ID) is None
        assert describe_holder(holder) == (f"run production: v4 (id {RUN_ID}; since 2026-03-31 12:00:05 UTC, "
                                           "execution)")


# --- a stand-in Prefect API for the status codes ------------------------------------------------------------


class StandIn(ThreadingHTTPServer):
    """The Prefect API's concurrency endpoints on loopback: the limit does not exist yet (404, then
    created), an increment answers `increment`, a renewal answers `renew`. Every request is kept."""

    def __init__(self, increment: int = 423, renew: int = 204, port: int = 0) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append((self.command, self.path, body))
                path = self.path.removeprefix("/api")
                if self.command == "GET" and path.startswith("/v2/concurrency_limits/"):
                    self.reply(404, {"detail": "Concurrency limit not found"})
                elif path == "/v2/concurrency_limits/":
                    self.reply(201, {"id": str(uuid.uuid4())})
                elif path == "/v2/concurrency_limits/increment-with-lease":
                    self.reply(increment, {"lease_id": str(uuid.uuid4())} if increment == 200 else {"detail": "no"})
                elif path.startswith("/v2/concurrency_limits/leases/") and path.endswith("/renew"):
                    self.reply(renew, None)
                else:
                    self.reply(404, {"detail": "not in the stand-in"})

            def reply(self, status: int, payload: Any) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)

    def to(self, path: str) -> list[Any]:
        return [body for _method, request_path, body in self.requests if request_path == f"/api{path}"]


@contextmanager
def prefect_api(server: StandIn) -> Iterator[StandIn]:
    with serving(server), temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{server.server_port}/api",
                                              PREFECT_UI_URL: UI}):
        yield server


def test_a_held_lock_is_waited_for_within_the_bound_then_names_its_holder(ledger: Ledger) -> None:
    ledger.open_release(environment="production", ref="v4", flow_run_id=RUN_ID,
                        flow_run_name="production: v4", phase="approvals", lock_acquired_at=SINCE)
    waiting_run = str(uuid.uuid4())
    waiting = ledger.open_release(environment="production", ref="v5", flow_run_id=waiting_run)
    with prefect_api(StandIn(increment=423)) as api:
        started = time.monotonic()
        with pytest.raises(LockHeld) as caught:
            with deploy_lock("production", ledger, waiting.id, wait_seconds=0.6, holder_run_id=waiting_run):
                pytest.fail("the lock was entered while held")
        waited = time.monotonic() - started
    assert 0.6 <= waited < 3, waited
    assert (caught.value.step, caught.value.action) == (
        "acquire deploy lock (production)", "wait for it to finish, or cancel it in the Prefect UI; nothing was changed")
    assert caught.value.cause == (f"production is held by run production: v4 (id {RUN_ID}, {UI}/runs/flow-run/"
                                  f"{RUN_ID}; since 2026-03-31 12:00:05 UTC, approvals)")
    attempts = api.to("/v2/concurrency_limits/increment-with-lease")
    assert len(attempts) >= 2, "it did not try again while waiting"
    assert attempts[0] == {"names": ["deploy-production"], "slots": 1, "mode": "concurrency",
                           "lease_duration": LEASE_SECONDS, "holder": {"type": "flow_run", "id": waiting_run}}
    assert api.to("/v2/concurrency_limits/") == [{"name": "deploy-production", "limit": 1}]
    assert (ledger.get(waiting.id).lock_acquired_at, ledger.get(waiting.id).lock_lease_id) == (None, None)


def test_only_runs_that_hold_the_lock_are_named(ledger: Ledger) -> None:
    """Every running release of the environment that took the lock; not the waiting run itself, not a
    run still waiting, not one that ended, not another environment's."""
    crashed = ledger.open_release(environment="production", ref="v3", lock_acquired_at=SINCE)
    ended = ledger.open_release(environment="production", ref="v2", lock_acquired_at=SINCE)
    ledger.finish(ended.id, "succeeded")
    ledger.open_release(environment="staging", ref="v4", lock_acquired_at=SINCE, phase="execution")
    ledger.open_release(environment="production", ref="v1", phase="prerequisites")
    holder = ledger.open_release(environment="production", ref="v4", flow_run_name="production: v4",
                                 phase="execution", lock_acquired_at=SINCE)
    waiting = ledger.open_release(environment="production", ref="v5", lock_acquired_at=SINCE)
    with prefect_api(StandIn(increment=423)), pytest.raises(LockHeld) as caught:
        with deploy_lock("production", ledger, waiting.id, wait_seconds=0):
            pass
    named = caught.value.cause.removeprefix("production is held by ")
    assert named == ", ".join(describe_holder(ledger.get(r.id)) for r in (crashed, holder))
    assert "v2" not in named and "v1" not in named and "v5" not in named


def test_a_holder_the_ledger_does_not_know_is_explained(ledger: Ledger) -> None:
    waiting = ledger.open_release(environment="production", ref="v5")
    with prefect_api(StandIn(increment=423)), pytest.raises(LockHeld) as caught:
        with deploy_lock("production", ledger, waiting.id, wait_seconds=0):
            pass
    assert caught.value.cause == ("production is held by a run that is not in the ledger, or one that died: "
                                  f"its lease lapses within {LEASE_SECONDS} s of its death")


@pytest.mark.parametrize("status", [400, 409, 500])
def test_an_error_other_than_locked_is_raised_at_once(ledger: Ledger, status: int) -> None:
    waiting = ledger.open_release(environment="production", ref="v5")
    with prefect_api(StandIn(increment=status)) as api:
        started = time.monotonic()
        with pytest.raises(PrefectHTTPStatusError) as caught:
            with deploy_lock("production", ledger, waiting.id, wait_seconds=30):
                pytest.fail("the lock was entered")
    assert caught.value.response.status_code == status
    assert time.monotonic() - started < 5, "it waited on an error that waiting does not cure"
    assert len(api.to("/v2/concurrency_limits/increment-with-lease")) == 1


# --- the renewal ----------------------------------------------------------------------------------------


@contextmanager
def renewing(lease: UUID, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Thread]:
    """The renewal loop with a lease of 0.2 s (a renewal every 0.05 s), in a thread that sees this
    test's Prefect settings."""
    monkeypatch.setattr(tasks.locks, "LEASE_SECONDS", 0.2)
    stop = threading.Event()
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(tasks.locks._renew, lease, stop), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=5)


def wait_for(condition: Any, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_a_renewal_refused_by_the_api_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lease = uuid.uuid4()
    with prefect_api(StandIn(renew=500)) as api, renewing(lease, monkeypatch) as thread:
        path = f"/v2/concurrency_limits/leases/{lease}/renew"
        assert wait_for(lambda: len(api.to(path)) >= 3), "the renewal stopped after an error"
        assert thread.is_alive()
    assert api.to(path)[0] == {"lease_duration": 0.2}


def test_a_renewal_while_the_api_is_unreachable_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lease = uuid.uuid4()
    (port,) = free_ports(1)
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}), \
            renewing(lease, monkeypatch) as thread:
        # Renewals while nothing listens (the API restarts), long enough for the first of them to fail:
        # a refused connection surfaces after a second or two of the client's own handling.
        ended = wait_for(lambda: not thread.is_alive(), seconds=4)
        assert not ended, "the renewal thread ended on a refused connection"
        with serving(StandIn(renew=204, port=port)) as api:
            assert wait_for(lambda: api.to(f"/v2/concurrency_limits/leases/{lease}/renew"), seconds=2), (
                "the lease is no longer renewed once the API is back")


# --- against the real Prefect server (slow) ----------------------------------------------------------------


def active_slots(environment: str) -> tuple[int, int]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name(environment))
    return limit.limit, limit.active_slots


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_ledger_holds_the_lease_while_the_lock_is_held(ledger: Ledger) -> None:
    environment = f"locks-{uuid.uuid4().hex[:8]}"
    run_id = str(uuid.uuid4())
    release = ledger.open_release(environment=environment, ref="v2", flow_run_id=run_id)
    with deploy_lock(environment, ledger, release.id, wait_seconds=1, holder_run_id=run_id):
        held = ledger.get(release.id)
        assert held.lock_acquired_at is not None and UUID(str(held.lock_lease_id))
        assert active_slots(environment) == (1, 1)
    after = ledger.get(release.id)
    assert after.lock_lease_id is None and after.lock_acquired_at == held.lock_acquired_at
    assert active_slots(environment) == (1, 0)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_lease_of_a_dead_holder_is_revoked_and_the_next_deploy_proceeds_at_once(ledger: Ledger) -> None:
    from prefect.client.orchestration import get_client

    from records.ledger import utcnow
    from tasks.locks import ensure_lock

    environment = f"locks-{uuid.uuid4().hex[:8]}"
    ensure_lock(environment)
    with get_client(sync_client=True) as client:  # what a killed deploy leaves: a lease nobody renews or frees
        lease = client.increment_concurrency_slots_with_lease(
            [lock_name(environment)], 1, "concurrency", LEASE_SECONDS).json()["lease_id"]
    dead = ledger.open_release(environment=environment, ref="v2", lock_acquired_at=utcnow(), lock_lease_id=lease)
    rollback = ledger.open_release(environment=environment, ref="rollback")
    with pytest.raises(LockHeld, match=r"is held by run v2 \(not a Prefect flow run; since "):
        with deploy_lock(environment, ledger, rollback.id, wait_seconds=0.2):
            pass
    assert release_dead_holder(ledger, ledger.get(dead.id)) is True
    assert ledger.get(dead.id).lock_lease_id is None
    started = time.monotonic()
    with deploy_lock(environment, ledger, rollback.id, wait_seconds=0):
        assert active_slots(environment) == (1, 1)
    assert time.monotonic() - started < 5
    assert release_dead_holder(ledger, ledger.get(dead.id)) is False, "a lease already revoked is revoked again"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_lock_is_created_once_with_room_for_one() -> None:
    from tasks.locks import ensure_lock

    environment = f"locks-{uuid.uuid4().hex[:8]}"
    ensure_lock(environment)
    ensure_lock(environment)
    assert active_slots(environment) == (1, 0)
