"""FAULTS #13: the deploy's flow process is killed (SIGKILL) while it changes the environment.

A real server, a real process worker: the test waits until the ledger shows the step running,
kills the process the worker started, and then expects the worker to mark the run Crashed, the
on_crashed hook and the server's automation to start the rollback (both may; one does the work),
and the environment to end on one consistent version: the one before the deploy.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployctl.stack import Stack
from records.ledger import Ledger
from tests.e2e.operator import (
    FINAL,
    flow_runs,
    kill_flow_process,
    on_server,
    stack_with_sandbox,
    trigger,
    wait_for,
)
from tests.flows.conftest import Sandbox
from tests.webhook import Receiver, receiving
from tests.flows.invariants import assert_healthy_on, assert_lock_free, state

pytestmark = pytest.mark.slow


BLOCK = "custom-webhook/crash-receiver"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[tuple[Stack, Sandbox]]:
    for server, box in stack_with_sandbox(tmp_path_factory):
        # The notification automation needs the block on the server: created now, then the automations
        # applied again, as an operator would after adding a channel (the command is idempotent).
        server.run([sys.executable, "-c", "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
                    f"B(name='crash receiver', url='http://127.0.0.1:{receiver.server_port}/crash', "
                    "json_data={'subject': '{{subject}}', 'body': '{{body}}'}).save('crash-receiver')"])
        box.edit("staging", lambda text: text.replace("[approvals]", f'[notifications]\nblocks = ["{BLOCK}"]\n\n[approvals]'))
        applied = server.run([sys.executable, "-m", "deployctl.automations"])
        assert "tell staging stakeholders when a run crashes" in applied, applied
        assert "tell production stakeholders" not in applied, "production names no notification block"
        yield server, box


def wait_for_step(ledger: Ledger, run_id: str, step: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        release = ledger.by_flow_run(run_id)
        if release is not None and any(s.name == step for s in ledger.steps(release.id)):
            return
        time.sleep(0.01)
    raise AssertionError(f"step {step} never started in run {run_id}")


def rollbacks_done(stack: Stack, since: float, timeout: float = 240) -> list[dict]:  # type: ignore[type-arg]
    """Wait until every rollback run started after the crash has ended; at least one must exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in flow_runs(stack, "rollback") if r["created"] and _epoch(r["created"]) >= since - 1]
        if runs and all(r["state"]["type"] in FINAL for r in runs):
            return runs
        time.sleep(1)
    raise AssertionError("the rollback did not run to an end")


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def canaries(workspace: Path) -> list[int]:
    """Processes started in `workspace` by check-canary (their environment names their scratch dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == workspace and \
                    b"/canary-" in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("step", ["backup-database", "pull-release", "run-migrations", "check-canary",
                                  "restart-application"])
def test_killed_mid_deploy_ends_on_the_previous_release(stack: tuple[Stack, Sandbox], receiver: Receiver,
                                                        step: str) -> None:
    server, box = stack
    config = box.config("staging")
    ledger = Ledger.for_state_dir(config.state_dir)
    before = state(box, "staging")
    run_id = trigger(server, "production-deployment/staging", "v2")
    wait_for_step(ledger, run_id, step)
    killed_at = time.time()
    kill_flow_process(run_id)
    assert wait_for(server, run_id, FINAL, timeout=300) == "CRASHED"

    # The server's automation starts a rollback in every case, the on_crashed hook only when something
    # changed: whichever gets the lock first does the work, the other finds nothing left to undo.
    runs = rollbacks_done(server, killed_at)
    assert all(r["state"]["type"] == "COMPLETED" for r in runs), runs
    release = ledger.by_flow_run(run_id)
    assert release is not None
    assert release.outcome in ("rolled_back", "aborted"), release.outcome
    assert state(box, "staging") == before
    assert_healthy_on(box, "staging", box.sha("v1"))
    with on_server(server):  # the deploy lock lives on the stack's server
        assert_lock_free("staging", ledger)
    deadline = time.monotonic() + 15
    while canaries(config.source.workspace) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not canaries(config.source.workspace), "the killed deploy's canary is still running"
    # The one message no flow can send: the server's automation reports the crash.
    name = next(r["name"] for r in flow_runs(server, "production-deployment") if r["id"] == run_id)
    deadline = time.monotonic() + 60
    while not any(m["subject"] == f"ALERT: a staging run crashed: {name}" for m in receiver.received):
        assert time.monotonic() < deadline, [m["subject"] for m in receiver.received]
        time.sleep(0.5)
