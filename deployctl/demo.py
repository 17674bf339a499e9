"""`make demo`: the whole product on the sandbox, with a real Prefect server and worker.

    1. bring up the sandbox: jobapp's staging and production at v1; its environment files watch a
       release for a minute (a sample every 5 s) instead of two hours
    2. start the Prefect server, the work pool, the deployments, the automations and a worker
    3. deploy v2 to staging (no approval)
    4. deploy v2 to production; approve it as the team lead and the product owner; the deploy
       schedules its post-deploy watch, which samples production while a few demo users use it
    5. deploy v4 to staging (healthy there); the v2 watch ends clean
    6. deploy v4 to production, where it trips over legacy rows: its canary fails before it takes
       any traffic, and production rolls itself back, code and database, to v2
    7. show `deployctl status production`, `deployctl dora production`, the UI address, and how to
       stop everything

The story runs as a client of the server, in a process whose environment points at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any
from uuid import UUID

from deployctl.stack import PROJECT_DIR, Stack
from deployments.config import load_environment

APPROVERS = (("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner"))


def demo(log=print) -> int:  # type: ignore[no-untyped-def]
    from sample_app import sandbox

    started = time.monotonic()
    sandbox.up(log=log)
    environments = sandbox.DEFAULT_ROOT / "environments"
    for path in environments.glob("*.toml"):
        path.write_text(path.read_text().replace("duration_seconds = 7200", f"duration_seconds = {WATCH_SECONDS}")
                        .replace("interval_seconds = 60", "interval_seconds = 5"))
    stack = Stack(environments_dir=environments)
    stack.up(log=log)
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
WATCH_SECONDS = 60


class DemoUsers(threading.Thread):
    """A few users of production while the watch samples it, so its figures are not all zero."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.done = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base_url, timeout=5, headers={"X-User-Id": "demo-user"}) as client:
            serial = 0
            while not self.done.wait(0.2):
                serial += 1
                try:
                    if serial % 3:
                        client.get("/api/jobs")
                    else:
                        client.post("/api/analyze", json={"text": "Python developer", "profile": "python sql"})
                except httpx.HTTPError:
                    pass  # the watch sees what users see


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


def started_by(flow_name: str, parameter: str, run_id: UUID, timeout: float, final: bool = False) -> Any:
    """The run of `flow_name` whose `parameter` names `run_id` (the watch of a deploy, the rollback of a
    failed one), once it exists or, with `final`, once it has ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
            mine = [r for r in runs if r.parameters.get(parameter) == str(run_id)]
            if mine and (not final or (mine[0].state is not None and mine[0].state.type.value in FINAL)):
                return mine[0]
            time.sleep(1)
    raise TimeoutError(f"no {flow_name} run for {run_id} {'ended' if final else 'started'} within {timeout:.0f} s")


def story() -> int:
    from deployctl.cli import main as deployctl

    staging = deploy("staging", "v2", "demo: release v2 (salary insights)", approve=False)
    production = deploy("production", "v2", "demo: release v2 (salary insights)", approve=True)
    good = staging.state.is_completed() and production.state.is_completed()
    watched = False
    if production.state.is_completed():
        watch = started_by("post-deploy-watch", "deploy_run_id", production.id, timeout=60)
        print(f"\n==> post-deploy watch of production: run {watch.id} samples health, error rate, p95 and "
              f"user activity every 5 s for {WATCH_SECONDS} s (two hours outside the demo)")
        users = DemoUsers(load_environment("production").service.base_url)
        users.start()
        deploy("staging", "v4", "demo: per-company cover letters", approve=False)
        print("    waiting for the production watch to end")
        ended = _wait(watch.id, FINAL, timeout=WATCH_SECONDS + 120)
        users.done.set()
        print(f"    {ended.name}: {ended.state.name}: {ended.state.message}")
        watched = ended.state.is_completed()
    else:
        deploy("staging", "v4", "demo: per-company cover letters", approve=False)

    print("\n==> the bad half: v4 is healthy on staging, but trips over production's legacy rows")
    failed = deploy("production", "v4", "demo: per-company cover letters", approve=True)
    rolled_back = None
    if failed.state.is_failed():
        why = (failed.state.message or failed.state.name).removeprefix("Flow run encountered an exception: ")
        print(f"    the deploy failed: {why[:400]}\n    waiting for the automatic rollback")
        rolled_back = started_by("rollback", "failed_run_id", failed.id, timeout=600, final=True)
        print(f"    rollback: {rolled_back.state.name} ({rolled_back.name})")
    print("\n==> deployctl status production")
    deployctl(["status", "production"])
    print("\n==> deployctl dora production")
    deployctl(["dora", "production", "--artifact"])
    ok = good and watched and rolled_back is not None and rolled_back.state.is_completed()
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(PROJECT_DIR)
    sys.exit(story())
