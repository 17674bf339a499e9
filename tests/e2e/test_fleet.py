"""A fleet, end to end: `sandbox up --hosts 3` (three app hosts on loopback addresses of their own behind a
real HAProxy), a real Prefect server with a worker for the deploys and one per host queue, and users
sending requests through the balancer the whole time.

The story, in order (each test starts where the one before left the fleet):
  1. v2 fails on its second batch (someone changed web-2's checkout by hand): web-1 had rolled; the
     automatic rollback returns it and the database to v1; web-2 keeps its hand change.
  2. with web-2's change undone, v2 rolls across the fleet; no request through the balancer fails.
  3. web-2's worker is killed while its run rolls web-2: the loss is seen, the deploy fails, the
     rollback cannot reach web-2 and says so (`deployctl status` shows the fleet mixed); once web-2's
     worker is back, the rollback run again brings the fleet onto one release.
  4. web-3's worker is gone before a deploy: phase 2's wait-for-hosts finds it before anything changes;
     the deploy is aborted, the database untouched, no host drained, the reached hosts' runs stood down.

Production has [dependencies]: each host builds the release's environment while it stands by, and
switches it live at its turn.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from deployctl.stack import Stack
from records.ledger import Ledger
from records.reporting import success_criteria
from tasks.fleet import fleet_problems
from tasks.load_balancer import HAProxy
from tests.e2e.operator import (FINAL, deployctl, flow_process, flow_runs, run_of, stack_with_sandbox, state_of, trigger,
                                wait_for)
from tests.flows.conftest import Sandbox
from tests.tasks.test_load_balancer import haproxy_binary  # noqa: F401  (fixture: fails under REQUIRE_HAPROXY)

pytestmark = pytest.mark.slow

HOSTS = ("web-1", "web-2", "web-3")
INSTALL_SHARED = Path(__file__).resolve().parents[1] / "tasks" / "install_shared.py"
ENVIRONMENTS = "envs"  # relative to the file: <sandbox>/environments/envs, and envs-web-N beside it


def fleet_file(text: str) -> str:
    """Production as the story needs it: no staging gate and no approvals (tests/e2e covers both), the
    watch off, batches of one host then two."""
    text = text.replace('staging_environment = "staging"', "")
    text = text.replace('required_roles = ["team-lead", "product-owner"]', "required_roles = []")
    text = text.replace("[watch]\nenabled = true", "[watch]\nenabled = false")
    # Each host's canary is one more app start per host and deploy; tests/flows covers canaries.
    text = re.sub(r"\n\[service\.canary\]\n(#.*\n)*env = .*\n", "\n", text)
    # The sandbox's own bounds stand: a busy CI machine takes many seconds to start a flow process.
    text = text.replace("batch_size = 1", "batch_size = 2")
    return with_dependencies(text) if "\n[fleet.rollout]\n" in text else text


def with_dependencies(text: str) -> str:
    """[dependencies]: each host builds the release's environment and makes it live at its turn, and a
    rollback makes the previous one live again. The environments share the orchestrator's packages (the
    tests' install_shared.py); the key follows README.md, which v2 changes, so v2 gets its own."""
    text = re.sub(r'^python = ".*"\n', "", text, count=1, flags=re.M)
    text = text.replace('start_command = ["{bin}/gunicorn"', 'start_command = ["{python}", "{bin}/gunicorn"', 1)
    python = Path(os.path.realpath(sys.executable))
    return text + "\n".join([
        "", "[dependencies]", f'directory = "{ENVIRONMENTS}"', f'python = "{python}"', 'venv_options = ["--without-pip"]',
        'files = ["README.md"]', f'install_command = ["{sys.executable}", "{INSTALL_SHARED}", "{{python}}"]',
        "check_command = []", ""])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, haproxy_binary: str) -> Iterator[tuple[Stack, Sandbox]]:  # noqa: F811
    yield from stack_with_sandbox(tmp_path_factory, hosts=len(HOSTS), edit=fleet_file)


class Users(threading.Thread):
    """Requests through the balancer from four keep-alive clients, together paced to `rate` a second
    (bench/fleet.py measures at 200 and more; here the CPU is shared with the rest of the suite), each
    answer counted: 200, 503 from the app's maintenance mode (its Retry-After says so), or a failure."""

    def __init__(self, base_url: str, clients: int = 4, rate: float = 120) -> None:
        super().__init__(daemon=True)
        self.base_url, self.clients, self.interval = base_url, clients, clients / rate
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        threads = [threading.Thread(target=self.user, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.seconds = time.monotonic() - started

    def user(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            due = time.monotonic()
            while not self.done.wait(max(0.0, due - time.monotonic())):
                due += self.interval
                try:
                    answer = client.get("/api/jobs")
                    kind = "maintenance" if answer.status_code == 503 and "Retry-After" in answer.headers else str(answer.status_code)
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                with self.lock:
                    self.answers[kind] += 1
                    if kind not in ("200", "maintenance") and len(self.failures) < 20:
                        self.failures.append(kind)

    def __enter__(self) -> Users:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(30)

    def report(self) -> str:
        total = sum(self.answers.values())
        return f"{total} requests in {self.seconds:.0f} s ({total / max(self.seconds, 1):.0f}/s): {dict(self.answers)}"


def serves(stack: Stack, box: Sandbox) -> dict[str, str]:
    production = box.config("production")
    found = {}
    for host in production.hosts:
        body = httpx.get(f"{host.service.base_url}/api/health", timeout=5).json()
        found[host.host] = str(body.get("version"))[:12]
    return found


def environments(box: Sandbox) -> dict[str, tuple[str, int]]:
    """Each host's live environment ([dependencies]): its key, and how many it holds."""
    from tasks.release_environments import MARKER, live_environment, release_environment

    found = {}
    for host in box.config("production").hosts:
        live = live_environment(host)
        assert live is not None and host.dependencies is not None, f"{host.host} has no live environment"
        # The live one is the checkout's own: the code and its packages moved together.
        assert live.key == release_environment(host, host.app_dir()).key, host.host
        built = [p for p in host.dependencies.directory.glob(f"*/{MARKER}") if not p.parent.is_symlink()]
        found[host.host] = (live.key, len(built))
    return found


def balancer(box: Sandbox) -> HAProxy:
    production = box.config("production")
    assert production.fleet is not None
    return HAProxy(production.fleet.load_balancer.socket, production.fleet.load_balancer.backend)


def hand_change(box: Sandbox) -> Path:
    return box.root / "production" / "hosts" / "web-2" / "app" / "jobapp" / "scraper.py"


def rollback_of(stack: Stack, deploy_run_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [r for r in flow_runs(stack, "rollback") if r["parameters"].get("failed_run_id") == deploy_run_id]
        if mine:
            return str(mine[0]["id"])
        time.sleep(1)
    raise AssertionError(f"no rollback of {deploy_run_id} started")


def host_runs(stack: Stack, release_id: int) -> list[dict]:  # type: ignore[type-arg]
    """The host-release runs a deploy (its ledger record) started."""
    return [r for r in flow_runs(stack, "host-release") if r["parameters"].get("release_id") == release_id]


def test_a_release_failing_on_its_second_batch_is_rolled_back_across_the_fleet(fleet: tuple[Stack, Sandbox]) -> None:
    stack, box = fleet
    v1, v2 = box.sha("v1")[:12], box.sha("v2")[:12]
    changed = hand_change(box)
    changed.write_text(changed.read_text() + "\n# changed by hand on web-2\n")
    production = box.config("production")
    with Users(production.service.base_url) as users:
        run_id = trigger(stack, "production-deployment/production", "v2")
        assert wait_for(stack, run_id, FINAL, timeout=600) == "FAILED"
        message = run_of(stack, run_id)["state"]["message"]
        assert "roll web-2, web-3 (production)" in message and "has local changes (jobapp/scraper.py)" in message
        rollback = rollback_of(stack, run_id)
        assert wait_for(stack, rollback, FINAL, timeout=600) == "COMPLETED", run_of(stack, rollback)["state"]
    assert serves(stack, box) == dict.fromkeys(HOSTS, v1)
    assert "changed by hand on web-2" in changed.read_text()  # never overwritten, by the deploy or the rollback
    assert all(server.in_rotation for server in balancer(box).servers())
    ledger = Ledger.for_state_dir(production.state_dir)
    release = ledger.by_flow_run(run_id)
    assert release is not None and release.outcome == "rolled_back" and release.db_revision_before == "0001"
    steps = {s.name: s.status for s in ledger.steps(release.id)}
    assert steps["roll-batch-1"] == "completed" and steps["roll-batch-2"] == "failed"
    assert steps["pull-release [web-1]"] == "completed" and steps["check-workspace [web-2]"] == "failed"
    assert "pull-release [web-2]" not in steps
    # web-1 built v2's environment at its turn and made it live; the rollback made v1's live again.
    undo = ledger.by_flow_run(rollback)
    assert undo is not None
    assert steps["switch-environment [web-1]"] == "completed"
    assert {s.name: s.status for s in ledger.steps(undo.id)}["switch-back-environment [web-1]"] == "completed"
    # The rollback started the hosts' runs before it stopped traffic: they came up while it undid the
    # database, not while users got the maintenance page.
    undone = [s.name for s in ledger.steps(undo.id)]
    assert undone.index("start-host-runs") < undone.index("stop-traffic") < undone.index("wait-for-hosts"), undone
    live = environments(box)
    # web-2 had built v2's while it stood by (before its turn found the hand change), never made live.
    assert len({key for key, _ in live.values()}) == 1 and all(count == 2 for _, count in live.values()), live
    assert users.failures == [], users.report()
    assert users.answers["200"] > 0, users.report()
    print(f"v2 failing on batch 2, then its rollback, through the balancer: {users.report()} (v2 was {v2})")


def test_v2_rolls_across_the_fleet_without_failing_a_request(fleet: tuple[Stack, Sandbox]) -> None:
    stack, box = fleet
    subprocess.run(["git", "checkout", "--", "jobapp/scraper.py"], cwd=hand_change(box).parent.parent, check=True)
    production = box.config("production")
    with Users(production.service.base_url) as users:
        run_id = trigger(stack, "production-deployment/production", "v2")
        assert wait_for(stack, run_id, FINAL, timeout=600) == "COMPLETED", run_of(stack, run_id)["state"]
    v2 = box.sha("v2")[:12]
    assert serves(stack, box) == dict.fromkeys(HOSTS, v2)
    assert users.failures == [] and users.answers["maintenance"] == 0, users.report()
    live = environments(box)  # v2's, built on each host (in the failed try) while it still served
    assert len({key for key, _ in live.values()}) == 1 and all(count == 2 for _, count in live.values()), live
    print(f"v2 rolled across 3 hosts through the balancer: {users.report()}")
    # One run per host under the deploy, each on its host's own queue.
    release = Ledger.for_state_dir(production.state_dir).by_flow_run(run_id)
    assert release is not None
    runs = host_runs(stack, release.id)
    assert sorted((r["parameters"]["host"], r["work_queue_name"]) for r in runs) == [(h, h) for h in HOSTS]
    # Every host's run was up and standing by before the first host was drained; web-2's and web-3's
    # turns came once web-1 had rolled.
    steps = Ledger.for_state_dir(production.state_dir).steps(release.id)
    order = [step.name for step in steps]
    assert all(step.status == "completed" for step in steps
               if step.name.startswith(("wait-for-turn", "start-host-runs", "prepare-environment")))
    assert {f"prepare-environment [{host}]" for host in HOSTS} <= {step.name for step in steps}
    # Built before the turn, so the turn only switches it live.
    assert all("built first" not in step.detail for step in steps if step.name.startswith("switch-environment ["))
    # The hosts' runs were started in the prerequisites, as soon as the release was resolved, beside the
    # checks: their processes came up while the rest of the prerequisites ran.
    started = partial(Ledger.for_state_dir(production.state_dir).step_started_at, release.id)
    assert order.index("resolve-release") < order.index("start-host-runs")
    assert started("start-host-runs") < started("run-release-tests"), order
    assert order.index("start-host-runs") < order.index("roll-batch-1")
    came_up = next(step.detail for step in steps if step.name == "wait-for-hosts")
    assert all(f"{host} (up " in came_up for host in HOSTS), came_up
    print(f"wait-for-hosts: {came_up}")
    assert {f"wait-for-turn [{host}]" for host in HOSTS} <= set(order)
    assert order.index("check-health [web-1]") < order.index("turn [web-2]") and "turn [web-3]" in order
    # The runbook's success criteria hold for the fleet as a whole: every host's log watched clean.
    criteria = {c.name: c for c in success_criteria(release, steps, notified=True)}
    assert all(c.met is not False for c in criteria.values()), criteria
    assert criteria["No critical errors in application logs"].evidence.startswith("3 of 3 hosts' logs clean")
    status = deployctl(stack, "status", "production")
    assert status.returncode == 0, status.stderr
    for host in HOSTS:
        assert any(line.startswith(host) and v2 in line and f"{host} UP" in line for line in status.stdout.splitlines()), status.stdout
    assert "MIXED" not in status.stdout
    dora = deployctl(stack, "dora", "production", "--json")
    assert dora.returncode == 0, dora.stderr
    figures = json.loads(dora.stdout)
    assert figures["deployments"] == 1 and figures["failures"] == 1, figures  # a fleet deploy counts once
    checked = deployctl(stack, "check", "production")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 hosts healthy, each in the rotation of haproxy backend app" in checked.stdout, checked.stdout
    # What the watch samples of a fleet: every host, and the balancer's view of them.
    full_sha = box.sha("v2")
    assert fleet_problems(production, full_sha, "watch production") == []
    lb = balancer(box)
    lb.drain("web-3", timeout=30)
    try:
        assert fleet_problems(production, full_sha, "watch production") == [
            "out of the balancer's rotation: web-3 DRAIN, 0 in flight"]
    finally:
        lb.ready("web-3", timeout=30)


def worker_pid(stack: Stack, queue: str) -> int:
    return int((stack.home / f"worker-{queue}.pid").read_text())


def start(stack: Stack, deployment: str, *params: str) -> str:
    """`prefect deployment run DEPLOYMENT --param ...`, as an operator types it; the run's id."""
    argv = [sys.executable, "-m", "prefect", "deployment", "run", deployment]
    for param in params:
        argv += ["--param", param]
    out = stack.run(argv)
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert match, out
    return match[1]


def test_a_host_whose_worker_is_killed_mid_rollout_is_lost_and_the_fleet_converges(fleet: tuple[Stack, Sandbox]) -> None:
    stack, box = fleet
    v2 = box.sha("v2")[:12]
    deploy = start(stack, "production-deployment/production", "ref=v2", "force=true")
    # Kill web-2's worker, and the flow process it started, once web-2 has its turn (its run stood by
    # from phase 1 on, and now changes the host): the worker's host gone as a whole, mid-change.
    ledger = Ledger.for_state_dir(box.config("production").state_dir)
    deadline = time.monotonic() + 300
    running: list[dict] = []  # type: ignore[type-arg]
    while not running and time.monotonic() < deadline:
        assert state_of(stack, deploy) not in FINAL, run_of(stack, deploy)["state"]
        release = ledger.by_flow_run(deploy)
        if release is not None and any(step.name == "turn [web-2]" for step in ledger.steps(release.id)):
            running = [r for r in flow_runs(stack, "host-release") if r["parameters"].get("host") == "web-2"
                       and r["parameters"].get("release_id") == release.id and r["state"]["type"] == "RUNNING"]
        time.sleep(0.2)
    assert running, "web-2's run never started"
    process = flow_process(running[0]["id"])
    os.killpg(worker_pid(stack, "web-2"), signal.SIGKILL)
    if process is not None:
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert wait_for(stack, deploy, FINAL, timeout=600) == "FAILED"
    message = run_of(stack, deploy)["state"]["message"]
    assert "web-2: its worker stopped polling queue web-2" in message and "its state is unknown" in message, message
    rollback = rollback_of(stack, deploy)
    # web-2 has no worker: the rollback cannot reach it, fails, and says which host.
    assert wait_for(stack, rollback, FINAL, timeout=600) == "FAILED"
    said = run_of(stack, rollback)["state"]["message"]
    assert "web-2: its worker stopped polling queue web-2" in said or "web-2: no worker took its run" in said, said
    status = deployctl(stack, "status", "production")
    assert status.returncode == 0, status.stderr
    assert "web-2" in status.stdout
    # Its worker back, the rollback run again converges the fleet.
    stack.up(log=lambda *_: None)
    second = start(stack, "rollback/production", f"failed_run_id={deploy}")
    assert wait_for(stack, second, FINAL, timeout=600) == "COMPLETED", run_of(stack, second)["state"]
    assert serves(stack, box) == dict.fromkeys(HOSTS, v2)
    assert all(server.in_rotation for server in balancer(box).servers())
    final = deployctl(stack, "status", "production")
    assert "MIXED" not in final.stdout, final.stdout


def test_a_host_out_of_reach_before_the_rollout_stops_the_deploy_before_anything_changes(
        fleet: tuple[Stack, Sandbox]) -> None:
    """web-3's worker is gone before the deploy starts: its run is never taken, phase 2's wait-for-hosts
    says so, and the deploy ends with nothing changed (no migration, no host drained or rolled, no
    rollback); the other hosts' standing-by runs are stood down."""
    stack, box = fleet
    v2 = box.sha("v2")[:12]
    before = {s.name: s.in_rotation for s in balancer(box).servers()}
    os.killpg(worker_pid(stack, "web-3"), signal.SIGKILL)
    try:
        deploy = start(stack, "production-deployment/production", "ref=v2", "force=true")
        assert wait_for(stack, deploy, FINAL, timeout=600) == "FAILED"
        message = run_of(stack, deploy)["state"]["message"]
        assert "wait for hosts (production): web-3: no worker took its run" in message, message
        assert "nothing was changed on it" in message and "no host was drained or changed" in message, message
        ledger = Ledger.for_state_dir(box.config("production").state_dir)
        release = ledger.by_flow_run(deploy)
        assert release is not None and release.outcome == "aborted", release
        assert not release.code_changed and not release.migration_started
        steps = {s.name: s.status for s in ledger.steps(release.id)}
        assert steps["wait-for-hosts"] == "failed" and not any(name.startswith("roll-batch") for name in steps)
        assert not any(name.startswith(("pull-release", "run-migrations", "turn [")) for name in steps), steps
        # The hosts that were reached stood down, Cancelled, having changed nothing.
        runs = {r["parameters"]["host"]: r for r in host_runs(stack, release.id)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(state_of(stack, runs[h]["id"]) not in FINAL for h in ("web-1", "web-2")):
            time.sleep(0.5)
        assert {h: state_of(stack, runs[h]["id"]) for h in HOSTS} == dict.fromkeys(HOSTS, "CANCELLED")
        assert {s.name: s.in_rotation for s in balancer(box).servers()} == before
        assert serves(stack, box) == dict.fromkeys(HOSTS, v2)
        assert not [r for r in flow_runs(stack, "rollback") if r["parameters"].get("failed_run_id") == deploy]
    finally:
        stack.up(log=lambda *_: None)


def test_a_prerequisite_failing_after_the_hosts_started_stands_them_down_having_changed_nothing(
        fleet: tuple[Stack, Sandbox]) -> None:
    """The hosts' runs start once the prerequisites have resolved the release, so that their processes
    come up while the rest of the prerequisites run; one failing then (a change made by hand in the
    deploy's own checkout) stands every run down: each ends Cancelled, no host or database changed."""
    stack, box = fleet
    production = box.config("production")
    changed = production.source.workspace / "jobapp" / "scraper.py"
    text = changed.read_text()
    before = {s.name: s.in_rotation for s in balancer(box).servers()}
    served = serves(stack, box)
    changed.write_text(text + "\n# changed by hand in the deploy's checkout\n")
    try:
        deploy = start(stack, "production-deployment/production", "ref=v2", "force=true")
        assert wait_for(stack, deploy, FINAL, timeout=600) == "FAILED"
        message = run_of(stack, deploy)["state"]["message"]
        assert "check workspace" in message and "has local changes (jobapp/scraper.py)" in message, message
    finally:
        changed.write_text(text)
    ledger = Ledger.for_state_dir(production.state_dir)
    release = ledger.by_flow_run(deploy)
    assert release is not None and release.outcome == "aborted", release
    assert not release.code_changed and not release.migration_started
    order = [s.name for s in ledger.steps(release.id)]
    assert "start-host-runs" in order, order  # the live SHA forced: started once check-migrations had run
    runs = {r["parameters"]["host"]: r["id"] for r in host_runs(stack, release.id)}
    assert sorted(runs) == sorted(HOSTS), runs
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(state_of(stack, run) not in FINAL for run in runs.values()):
        time.sleep(1)
    assert {h: state_of(stack, run) for h, run in runs.items()} == dict.fromkeys(HOSTS, "CANCELLED")
    said = {s.name: s.detail for s in ledger.steps(release.id)}
    for host in HOSTS:
        assert "the deploy's prerequisites failed" in said[f"stand-down [{host}]"], said
        assert f"turn [{host}]" not in said and f"pull-release [{host}]" not in said, said
    assert {s.name: s.in_rotation for s in balancer(box).servers()} == before
    assert serves(stack, box) == served
    assert not [r for r in flow_runs(stack, "rollback") if r["parameters"].get("failed_run_id") == deploy]
