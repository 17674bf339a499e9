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

`make demo-fleet` (`deployctl demo --hosts 3`) tells the fleet's story instead, on a sandbox of its own
(.sandbox-fleet/): production is three hosts on loopback addresses of their own behind HAProxy, each
with its worker on its own queue. v2 goes to staging; on production the first batch rolls, the second
finds a hot fix made by hand on web-2 and refuses to overwrite it, and the automatic rollback returns
the fleet and the database to v1 while users keep being answered; the hot fix undone, v2 rolls across
the fleet with two approvals.

The story runs as a client of the server, in a process whose environment points at it.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from typing import Any
from uuid import UUID

from deployctl.follow import FINAL, Follower
from deployctl.stack import PROJECT_DIR, Stack, StackError
from tasks.processes import Advice, Command, one_line, run
from deployments.config import load_environment

APPROVERS = (("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner"))


def demo(log=print, hosts: int = 0) -> int:  # type: ignore[no-untyped-def]
    """The story on the sandbox; with `hosts`, the fleet's story (`fleet_story`) on a sandbox of its own."""
    from sample_app import sandbox

    started = time.monotonic()
    if hosts:
        root = sandbox.FLEET_ROOT
        sandbox.up(root, log=log, edit=short_watch, hosts=hosts, ports=sandbox.FLEET_PORTS)
    else:
        root = sandbox.DEFAULT_ROOT
        sandbox.up(log=log, edit=short_watch)
    environments = root / "environments"
    stack = Stack(environments_dir=environments)
    stack.up(log=log)
    story = [sys.executable, "-m", "deployctl.demo", *(["--fleet"] if hosts else [])]
    # The story prints to this terminal as it goes; an hour is a bound, not a plan (it takes minutes).
    result = run(Command.of(story, cwd=PROJECT_DIR, env=stack.env(), timeout=3600),
                 step="demo", error=one_line(StackError), capture=False,
                 advice=Advice(start="run `make install` again", slow="the demo stopped after an hour; `make stop` ends it"))
    log(f"\nThe demo took {time.monotonic() - started:.0f} s.")
    log(f"Prefect UI: {stack.ui_url}  (runs, artifacts and logs of every deploy)")
    log("Stop everything: make stop")
    return result.returncode


def short_watch(environment_file: str) -> str:
    """The demo watches a release for a minute, a sample every 5 s, instead of two hours."""
    return (environment_file.replace("duration_seconds = 7200", f"duration_seconds = {WATCH_SECONDS}")
            .replace("interval_seconds = 60", "interval_seconds = 5"))


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
    """Start a deploy and follow it step by step to its end, approving it as two people when it pauses."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    print(f"\n==> deploy {ref} to {environment}")
    run = run_deployment(f"production-deployment/{environment}", parameters={"ref": ref, "reason": reason},
                         timeout=0, as_subflow=False)
    print(f"    run {run.name} ({run.id})")
    follower = Follower(run.id)
    approvers = list(APPROVERS) if approve else []
    answered = None  # the pause last answered, by its state's id: the run may pause again within a poll
    deadline = time.monotonic() + 900
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            current = follower.poll(client)
            if current.state.type.value in FINAL:
                print(f"    {environment}: {current.state.name}")
                return current
            paused = current.state.is_paused()
            if paused and approvers and current.state.id != answered:
                name, role = approvers.pop(0)
                print(f"    answering the approval form as {name} ({role})")
                said = deployctl("approve", str(run.id), "--as", name, "--role", role, "--comment", "demo: looks good")
                print(f"    $ deployctl approve ... → {said.strip()}")
                answered = current.state.id
            time.sleep(0.5)
    raise TimeoutError(f"the deploy {run.name} did not end within 900 s")


def say(message: str, width: int = 400) -> str:
    """A long message shortened at a word, never in the middle of one."""
    return textwrap.shorten(message, width, placeholder=" …")


def started_by(flow_name: str, parameter: str, run_id: UUID, timeout: float) -> Any:
    """The run of `flow_name` whose `parameter` names `run_id` (the watch of a deploy, the rollback of a
    failed one), once it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
            mine = [r for r in runs if r.parameters.get(parameter) == str(run_id)]
            if mine:
                return mine[0]
            time.sleep(1)
    raise TimeoutError(f"no {flow_name} run for {run_id} started within {timeout:.0f} s")


def deployctl(*args: str, show: bool = False) -> str:
    """`deployctl ARGS` as the reader would type it, in a process of its own; what it printed, or, with
    `show`, printed to this terminal."""
    result = run(Command.of([sys.executable, "-m", "deployctl", *args], cwd=PROJECT_DIR, timeout=120),
                 step=f"deployctl {args[0]}", error=one_line(StackError), capture=not show,
                 advice=Advice(start="run `make install` again", slow="the Prefect server did not answer; `make stop`"))
    if not result.ok:
        raise StackError(f"deployctl {args[0]} exited {result.returncode}: {result.error_line()}")
    return result.stdout or ""


def follow_rollback(failed: Any, headline: str) -> Any:
    """The failed deploy's automatic rollback, followed to its end; None when the deploy did not fail."""
    if not failed.state.is_failed():
        return None
    why = (failed.state.message or failed.state.name).removeprefix("Flow run encountered an exception: ")
    print(f"    the deploy failed: {say(why)}")
    started = started_by("rollback", "failed_run_id", failed.id, timeout=120)
    print(f"\n==> {headline}: run {started.name} ({started.id})")
    rolled_back = Follower(started.id).follow(timeout=600)
    print(f"    rollback: {rolled_back.state.name}" + (f": {say(rolled_back.state.message)}"
                                                    if rolled_back.state.message else ""))
    return rolled_back


def story() -> int:
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
        print("\n==> the production watch goes on: one sample every 5 s")
        ended = Follower(watch.id).follow(timeout=WATCH_SECONDS + 120)
        users.done.set()
        print(f"    {ended.name}: {ended.state.name}: {say(ended.state.message or '')}")
        watched = ended.state.is_completed()
    else:
        deploy("staging", "v4", "demo: per-company cover letters", approve=False)

    print("\n==> the bad half: v4 is healthy on staging, but trips over production's legacy rows")
    failed = deploy("production", "v4", "demo: per-company cover letters", approve=True)
    rolled_back = follow_rollback(failed, "the automatic rollback")
    print("\n==> deployctl status production")
    deployctl("status", "production", show=True)
    print("\n==> deployctl dora production")
    deployctl("dora", "production", "--artifact", show=True)
    ok = good and watched and rolled_back is not None and rolled_back.state.is_completed()
    # The events of the last command are sent before the process ends, not reported as still queued.
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)
    return 0 if ok else 1


def fleet_story() -> int:
    """Production as three hosts behind HAProxy, each with its own worker on its own queue."""
    from sample_app import sandbox

    production = load_environment("production")
    assert production.fleet is not None
    web2 = production.for_host(production.fleet.hosts[1].name)
    hand_changed = web2.app_dir() / "jobapp" / "scraper.py"
    print(f"\n==> production is {len(production.fleet.hosts)} hosts behind HAProxy at {production.service.base_url}; "
          f"rolled {production.fleet.rollout.batch_size} at a time after {production.fleet.hosts[0].name} alone")
    deployctl("status", "production", "--limit", "0", show=True)
    staging = deploy("staging", "v2", "demo: release v2 (salary insights)", approve=False)

    print(f"\n==> someone hot-fixed {web2.host} by hand: {hand_changed.relative_to(sandbox.PROJECT_DIR)} changed in "
          "its checkout. The deploy rolls the first batch, then refuses to overwrite the hand change on the second")
    hand_changed.write_text(hand_changed.read_text() + f"\n# hot fix made by hand on {web2.host}\n")
    users = DemoUsers(production.service.base_url)
    users.start()
    failed = deploy("production", "v2", "demo: release v2 (salary insights)", approve=True)
    rolled_back = follow_rollback(failed, "the automatic rollback returns every host, then the database, to v1")
    deployctl("status", "production", "--limit", "3", show=True)

    print(f"\n==> the hot fix is undone on {web2.host} (it belongs in the repository); v2 again, across the fleet")
    run(Command.of(["git", "checkout", "--", "jobapp/scraper.py"], cwd=web2.app_dir(), timeout=30), step="undo the hot fix",
        error=one_line(StackError), advice=Advice(start="install git", slow="git did not answer"))
    good = deploy("production", "v2", "demo: release v2 (salary insights), again", approve=True)
    users.done.set()
    print("\n==> deployctl status production")
    deployctl("status", "production", "--limit", "5", show=True)
    print("\n==> deployctl dora production: the fleet's deploys count once each")
    deployctl("dora", "production", show=True)
    ok = (staging.state.is_completed() and failed.state.is_failed() and rolled_back is not None
          and rolled_back.state.is_completed() and good.state.is_completed())
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(PROJECT_DIR)
    sys.exit(fleet_story() if "--fleet" in sys.argv[1:] else story())
