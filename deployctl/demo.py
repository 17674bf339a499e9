"""`make demo`: the whole product on the sandbox, with a real Prefect server and worker.

    1. start the Prefect server, the work pool, the deployments and a worker (`deployctl stack`)
    2. bring up the sandbox: jobapp's staging and production at v1
    3. deploy v2 to staging (no approval)
    4. deploy v2 to production; approve it as the team lead and the product owner
    5. deploy v4 to staging (healthy there) and to production, where it trips over legacy rows:
       production rolls itself back, code and database, to v2
    6. show `deployctl status production`, the UI address, and how to stop everything

The story runs as a client of the server, in a process whose environment points at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any
from uuid import UUID

from deployctl.stack import PROJECT_DIR, Stack

APPROVERS = (("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner"))


def demo(log=print) -> int:  # type: ignore[no-untyped-def]
    from sample_app import sandbox

    started = time.monotonic()
    stack = Stack()
    stack.up(log=log)
    sandbox.up(log=log)
    result = subprocess.run([sys.executable, "-m", "deployctl.demo"], env=stack.env(), cwd=PROJECT_DIR)
    log(f"\nThe demo took {time.monotonic() - started:.0f} s.")
    log(f"Prefect UI: {stack.ui_url}  (runs, artifacts and logs of every deploy)")
    log("Stop everything: make stop")
    return result.returncode


def _wait(run_id: UUID, until: set[str], timeout: float = 600) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state is not None and (run.state.type.value in until or run.state.name in until):
                return run
            time.sleep(1)
    raise TimeoutError(f"run {run_id} did not reach {until} in {timeout:.0f} s")


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def deploy(environment: str, ref: str, reason: str, approve: bool) -> Any:
    from prefect.deployments import run_deployment

    from deployctl.cli import main as deployctl

    print(f"\n==> deploy {ref} to {environment}")
    run = run_deployment(f"production-deployment/{environment}", parameters={"ref": ref, "reason": reason},
                         timeout=0, as_subflow=False)
    print(f"    run {run.name} ({run.id})")
    if approve:
        for name, role in APPROVERS:
            waiting = _wait(run.id, {"Paused"} | FINAL)
            if waiting.state.type.value in FINAL:
                break
            print(f"    waiting for approval; answering as {name} ({role})")
            deployctl(["approve", str(run.id), "--as", name, "--role", role, "--comment", "demo: looks good"])
            time.sleep(2.5)
    final = _wait(run.id, FINAL)
    print(f"    {environment}: {final.state.name}")
    return final


def wait_for_rollback(failed_run_id: UUID, timeout: float = 600) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["rollback"])))
            mine = [r for r in runs if r.parameters.get("failed_run_id") == str(failed_run_id)]
            if mine and mine[0].state is not None and mine[0].state.type.value in FINAL:
                return mine[0]
            time.sleep(1)
    raise TimeoutError(f"no rollback of {failed_run_id} ended within {timeout:.0f} s")


def story() -> int:
    from deployctl.cli import main as deployctl

    staging = deploy("staging", "v2", "demo: release v2 (salary insights)", approve=False)
    production = deploy("production", "v2", "demo: release v2 (salary insights)", approve=True)
    good = staging.state.is_completed() and production.state.is_completed()

    print("\n==> the bad half: v4 is healthy on staging, but trips over production's legacy rows")
    deploy("staging", "v4", "demo: per-company cover letters", approve=False)
    failed = deploy("production", "v4", "demo: per-company cover letters", approve=True)
    rolled_back = None
    if failed.state.is_failed():
        print("    production failed its post-deployment verification; waiting for the automatic rollback")
        rolled_back = wait_for_rollback(failed.id)
        print(f"    rollback: {rolled_back.state.name} ({rolled_back.name})")
    print("\n==> deployctl status production")
    deployctl(["status", "production"])
    ok = good and rolled_back is not None and rolled_back.state.is_completed()
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(PROJECT_DIR)
    sys.exit(story())
