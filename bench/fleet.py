"""Fleet: what users see through the balancer while a 3-host fleet is deployed and rolled back, and what
rolling it batch by batch costs over one host's own release.

Builds, in a temporary directory, a SQLite sandbox whose production is a fleet (`sandbox up --hosts 3`:
web-1..web-3 on loopback addresses of their own behind a real HAProxy) and a Prefect stack for it (a
server on a free loopback port, the deploy worker and one worker per host queue, all ending with this
script). Production's file is edited as tests/e2e/test_fleet.py's `fleet_file` does (no staging gate,
no approvals, the watch off, batches of web-1 then web-2 + web-3) after the tests' `fast` tuning. Deploys
are started as an operator does, `prefect deployment run production-deployment/production`.

Each round, from v1:

  rollback  web-2's checkout changed by hand (jobapp/scraper.py, which v2 changes); v2 is deployed,
            web-1 rolls, batch 2 fails on web-2's check-workspace, the automatic rollback returns the
            fleet and the database to v1. The hand change is then undone (`git checkout --`).
  deploy    v2 rolled across the fleet, successfully.
  (between rounds, with --rounds > 1: the rollback deployment run by hand takes the fleet back to v1.)

Load: CLIENTS keep-alive clients (one httpx.Client each, threads of a child process, so neither side
slows the other through the GIL) paced to RATE requests/s in all, GET /api/jobs through the balancer,
from a second before the deploy is started until a second after it (and its rollback) ended. A request
fails when its answer is not 200; during the rollback, the app's maintenance answer (503 with
Retry-After) is not a failure: it is counted apart, with its window.

A deploy of v2 that fails in the deploy part (a host's run lost, say) is reported with its traffic, left
to its automatic rollback, and tried again, up to --attempts (3); the figure's note says so.

Figures (failures summed over the rounds, times the median of the rounds):

  failed requests, 3-host rolling deploy         target 0
  failed requests, rollback across the fleet     target 0 (maintenance 503s not counted)
  rollout time vs one host's phase 2 per batch   from the ledger: the deploy's roll-batch-N steps summed,
                                                 with what the hosts' start held the deploy up: its
                                                 wait-for-hosts, and the part of start-host-runs that
                                                 none of the prerequisites' checks beside it covered;
                                                 against (number of batches) x the median over the
                                                 hosts of their host-release run (Running to Completed,
                                                 as the Prefect server recorded it); target <= 1.2x
  load through the balancer                      the lowest request rate achieved; target >= 200/s

    .venv/bin/python bench/fleet.py [--rounds 1] [--rate 240] [--clients 16] [--attempts 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import Load, prefect_server_database  # noqa: E402 - the path above makes it importable

START_RUNS = "start-host-runs"
WAIT_HOSTS = "wait-for-hosts"
HOSTS = ("web-1", "web-2", "web-3")
DEPLOYMENT = "production-deployment/production"
RATE_TARGET = 200.0
RATIO_TARGET = 1.2
HAND_CHANGED = Path("jobapp") / "scraper.py"

FIGURE_DEPLOY = "failed requests, 3-host rolling deploy"
FIGURE_ROLLBACK = "failed requests, rollback across the fleet"
FIGURE_ROLLOUT = "rollout time vs one host's phase 2 per batch"
FIGURE_RATE = "load through the balancer (lowest rate of a deploy)"


class SetupError(RuntimeError):
    """The bench could not build or drive what it measures."""


# --- what the load (bench/_harness.py) saw ----------------------------------------------------------

@dataclass(frozen=True)
class Request:
    sent: float
    done: float
    status: int | None
    retry_after: str | None
    error: str | None

    @property
    def maintenance(self) -> bool:
        return self.status == 503 and self.retry_after is not None

    def kind(self) -> str:
        if self.error is not None:
            return self.error.split(":", 1)[0]  # the exception's name
        return "maintenance" if self.maintenance else str(self.status)


def rate_of(records: list[Request]) -> float:
    if not records:
        return 0.0
    span = records[-1].done - records[0].sent
    return len(records) / span if span > 0 else 0.0


def latency_line(records: list[Request]) -> str:
    seconds = sorted(r.done - r.sent for r in records)
    if not seconds:
        return "no requests"
    pick = lambda q: seconds[min(len(seconds) - 1, int(q * len(seconds)))] * 1000  # noqa: E731
    return f"latency p50 {pick(0.5):.0f} ms, p99 {pick(0.99):.0f} ms, max {seconds[-1] * 1000:.0f} ms"


# --- the stack, the ledger, the server's runs ---------------------------------------------------

def epoch(moment: Any) -> float:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def step_times(ledger: Any, release_id: int) -> list[tuple[str, float, float | None, str]]:
    """(name, started, finished, status) of a release's ledger steps, in order."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from records.ledger import Step

    with Session(ledger.engine) as session:
        rows = session.scalars(select(Step).where(Step.release_id == release_id).order_by(Step.id))
        return [(s.name, epoch(s.started_at), epoch(s.finished_at) if s.finished_at else None, s.status) for s in rows]


def uncovered(window: tuple[float, float], others: list[tuple[float, float]]) -> float:
    """The seconds of `window` that none of `others` (start, end) covers."""
    start, end = window
    covered, cursor = 0.0, start
    for other_start, other_end in sorted(others):
        low, high = max(other_start, cursor), min(other_end, end)
        if high > low:
            covered += high - low
        cursor = max(cursor, min(other_end, end))
    return max(0.0, (end - start) - covered)


def run_states(stack: Any, run_id: str) -> dict[str, float]:
    """When a flow run first entered each state type (SCHEDULED, PENDING, RUNNING, COMPLETED, ...)."""
    import httpx

    states = httpx.get(f"{stack.api_url}/flow_run_states/", params={"flow_run_id": run_id}, timeout=10).json()
    first: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        first.setdefault(state["type"], epoch(state["timestamp"]))
    return first


def step_at(steps: list[tuple[str, float, float | None, str]], moment: float) -> str:
    current = "-"
    for name, start, _end, _status in steps:
        if start <= moment:
            current = name
    return current


# --- one scenario -------------------------------------------------------------------------------

@dataclass
class Observed:
    records: list[Request]
    t0: float
    t1: float
    outcome: str
    steps: list[tuple[str, float, float | None, str]]
    allow_maintenance: bool = False

    @property
    def failed(self) -> list[Request]:
        return [r for r in self.records if r.status != 200 and not (self.allow_maintenance and r.maintenance)]


def print_traffic(label: str, seen: Observed, clients: int) -> None:
    records = seen.records
    answers = Counter(r.kind() for r in records)
    print(f"  traffic: {len(records)} requests at {rate_of(records):.0f}/s from {clients} keep-alive clients "
          f"through the balancer; {latency_line(records)}")
    print(f"  answers: {dict(answers)}")
    maintenance = [r for r in records if r.maintenance]
    if maintenance:
        print(f"  maintenance (503 with Retry-After, {'not failures' if seen.allow_maintenance else 'FAILURES here'}): "
              f"{len(maintenance)}, from t={maintenance[0].sent - seen.t0:.1f} s to t={maintenance[-1].done - seen.t0:.1f} s "
              f"({maintenance[-1].done - maintenance[0].sent:.2f} s)")
    failed = seen.failed
    print(f"  failed ({label}): {len(failed)}")
    by_kind = Counter((r.kind(), step_at(seen.steps, r.sent)) for r in failed)
    for (kind, step), count in sorted(by_kind.items(), key=lambda item: -item[1]):
        times = [r.sent - seen.t0 for r in failed if (r.kind(), step_at(seen.steps, r.sent)) == (kind, step)]
        print(f"    {count:>5}  {kind:<24} during {step:<34} t={min(times):.1f}..{max(times):.1f} s")


def print_steps(seen: Observed) -> None:
    print("  steps (s since the deploy was started):")
    for name, start, end, status in seen.steps:
        print(f"    {start - seen.t0:7.2f} {(end or start) - seen.t0:7.2f}  {name:<40} {status}")


@dataclass
class Attempt:
    """One deploy of v2 under load and, when it failed, its automatic rollback."""
    seen: Observed
    run_id: str
    state: str
    message: str
    rollback_state: str | None
    rollback_message: str
    release_id: int

    def first_line(self) -> str:
        return self.message.splitlines()[0][:400] if self.message else "(no message)"


def deploy_under_load(stack: Any, box: Any, args: argparse.Namespace, scratch: Path) -> Attempt:
    """`prefect deployment run` of v2 with the load running, until the deploy and, if it failed, the
    rollback it started have ended."""
    from records.ledger import Ledger
    from tests.e2e.operator import FINAL, run_of, trigger, wait_for
    from tests.e2e.test_fleet import rollback_of

    production = box.config("production")
    load = Load(production.service.base_url, [[("GET", "/api/jobs", None)]] * args.clients, args.rate, scratch,
                agent="bench-fleet")
    t0 = time.time()
    rollback_state, rollback_message = None, ""
    try:
        run_id = trigger(stack, DEPLOYMENT, "v2")
        state = wait_for(stack, run_id, FINAL, timeout=900)
        message = run_of(stack, run_id)["state"].get("message") or ""
        if state == "FAILED":
            rollback = rollback_of(stack, run_id)
            rollback_state = wait_for(stack, rollback, FINAL, timeout=900)
            rollback_message = run_of(stack, rollback)["state"].get("message") or ""
    finally:
        t1 = time.time()
        records = [Request(row[0], row[1], row[4], row[5], row[6]) for row in load.stop()]
    ledger = Ledger.for_state_dir(production.state_dir)
    release = ledger.by_flow_run(run_id)
    if release is None:
        raise SetupError(f"no ledger record for deploy run {run_id}")
    undo = next((r for r in ledger.all_releases("production") if r.rollback_of == release.id), None)
    steps = sorted(step_times(ledger, release.id) + (step_times(ledger, undo.id) if undo else []), key=lambda s: s[1])
    seen = Observed(records, t0, t1, state, steps, allow_maintenance=state == "FAILED")
    return Attempt(seen, run_id, state, message, rollback_state, rollback_message, release.id)


def rolled_back_by_hand(stack: Any, attempt: Attempt) -> None:
    """An automatic rollback that did not complete, run again by hand (not measured), as an operator
    would once the cause is gone; the bench cannot go on with a fleet on two releases."""
    from tests.e2e.operator import FINAL, run_of, wait_for
    from tests.e2e.test_fleet import start

    print(f"  the rollback ended {attempt.rollback_state}: {attempt.rollback_message.splitlines()[0][:300] if attempt.rollback_message else ''}")
    print("  running the rollback deployment again by hand for the same deploy (not measured)", flush=True)
    again = start(stack, "rollback/production", f"failed_run_id={attempt.run_id}")
    state = wait_for(stack, again, FINAL, timeout=900)
    if state != "COMPLETED":
        raise SetupError(f"the rollback of {attempt.run_id}, run again by hand, ended {state}: "
                         f"{run_of(stack, again)['state'].get('message')}")


def rollback_scenario(stack: Any, box: Any, args: argparse.Namespace,
                      scratch: Path) -> tuple[Observed, str | None, bool]:
    """v2 failing on batch 2 (web-2 changed by hand) and its automatic rollback, under load; with what
    went other than planned, if anything, and whether the automatic rollback completed."""
    from tests.e2e.test_fleet import hand_change

    changed = hand_change(box)
    changed.write_text(changed.read_text() + "\n# changed by hand on web-2 (bench/fleet.py)\n")
    attempt = deploy_under_load(stack, box, args, scratch)
    seen = attempt.seen
    if attempt.state != "FAILED":
        raise SetupError(f"v2 with web-2 changed by hand was meant to fail on its second batch; it ended "
                         f"{attempt.state}: {attempt.first_line()}")
    batch_steps = {name: status for name, _s, _e, status in seen.steps if name.startswith("roll-batch")}
    print(f"  deploy FAILED: {attempt.first_line()}")
    print(f"  roll batches: {batch_steps}; automatic rollback {attempt.rollback_state}")
    print_steps(seen)
    unplanned = None
    if "roll web-2" not in attempt.message or "has local changes" not in attempt.message:
        unplanned = "the deploy failed, but not on web-2's hand change"
        print(f"  NOTE: {unplanned} as intended; see the message above")
    if attempt.rollback_state != "COMPLETED":
        unplanned = f"the automatic rollback ended {attempt.rollback_state}"
        rolled_back_by_hand(stack, attempt)
    return seen, unplanned, attempt.rollback_state == "COMPLETED"


def deploy_scenario(stack: Any, box: Any, args: argparse.Namespace,
                    scratch: Path) -> tuple[Observed, dict[str, Any], list[Attempt]]:
    """v2 rolled across the fleet under load (a deploy that fails is rolled back and tried again, up to
    --attempts, each failure reported); the rollout's timing."""
    from records.ledger import Ledger
    from tests.e2e.test_fleet import hand_change, host_runs

    subprocess.run(["git", "checkout", "--", str(HAND_CHANGED)], cwd=hand_change(box).parent.parent, check=True,
                   capture_output=True)
    production = box.config("production")
    failed_attempts: list[Attempt] = []
    while True:
        attempt = deploy_under_load(stack, box, args, scratch)
        if attempt.state == "COMPLETED":
            break
        failed_attempts.append(attempt)
        print(f"  attempt {len(failed_attempts)}: the deploy ended {attempt.state}: {attempt.first_line()}")
        print(f"  its automatic rollback: {attempt.rollback_state}")
        print_traffic("this failed attempt and its rollback: anything but 200 or the maintenance answer",
                      attempt.seen, args.clients)
        if attempt.rollback_state != "COMPLETED":
            rolled_back_by_hand(stack, attempt)
        if len(failed_attempts) >= args.attempts:
            raise SetupError(f"the deploy of v2 across the fleet failed {len(failed_attempts)} time(s); the last: "
                             f"{attempt.first_line()}")
        print(f"  deploying v2 again (attempt {len(failed_attempts) + 1} of {args.attempts})", flush=True)
    seen = attempt.seen
    t0, t1, steps = seen.t0, seen.t1, seen.steps
    ledger = Ledger.for_state_dir(production.state_dir)
    release = ledger.by_flow_run(attempt.run_id)
    assert release is not None
    print(f"  deploy COMPLETED in {t1 - t0:.1f} s (ledger: release {release.id} {release.outcome})")

    # The rollout: the deploy's start-host-runs and roll-batch-N steps, and each host's own run of
    # host-release from its turn (its wait-for-turn step's end) to its end.
    records_by_name = {s.name: s for s in ledger.steps(release.id)}
    batches = sorted((name for name in records_by_name if name.startswith("roll-batch-")), key=lambda n: int(n.rsplit("-", 1)[1]))
    if not batches or any(records_by_name[b].seconds is None for b in batches):
        raise SetupError(f"the ledger has no finished roll-batch step for release {release.id}: {sorted(records_by_name)}")
    if (records_by_name.get(START_RUNS) is None or records_by_name[START_RUNS].seconds is None):
        raise SetupError(f"the ledger has no finished {START_RUNS} step for release {release.id}: {sorted(records_by_name)}")
    # Creating the hosts' runs goes on beside the prerequisites' checks: the deploy waits on it only for the
    # part of it that none of its own steps covers.
    windows = {name: (start, end or start) for name, start, end, _status in steps}
    own = [window for name, window in windows.items() if "[" not in name and name != START_RUNS]
    standing_up = uncovered(windows[START_RUNS], own)
    # What phase 2 waited for processes still starting when phase 1 was done (none when phase 1 took longer).
    waiting = records_by_name[WAIT_HOSTS].seconds or 0.0 if WAIT_HOSTS in records_by_name else 0.0
    roll = standing_up + waiting + sum(records_by_name[b].seconds or 0.0 for b in batches)
    runs = host_runs(stack, release.id)
    if sorted(r["parameters"]["host"] for r in runs) != sorted(HOSTS):
        raise SetupError(f"expected one host-release run per host for release {release.id}, found "
                         f"{[r['parameters'].get('host') for r in runs]}")
    hosts: dict[str, dict[str, float]] = {}
    for run in runs:
        host = run["parameters"]["host"]
        states = run_states(stack, str(run["id"]))
        turn = windows.get(f"wait-for-turn [{host}]")
        if turn is None:
            raise SetupError(f"{host}'s run has no wait-for-turn step in release {release.id}")
        hosts[host] = {"created": epoch(run["created"]), **{k.lower(): v for k, v in states.items()},
                       "turn": turn[1], "end": epoch(run["end_time"])}
        hosts[host]["run"] = hosts[host]["end"] - hosts[host]["turn"]
        hosts[host]["ledger"] = sum(s.seconds or 0.0 for name, s in records_by_name.items()
                                    if name.endswith(f"[{host}]") and not name.startswith("wait-for-turn"))
    phase2 = statistics.median(h["run"] for h in hosts.values())
    ledger_phase2 = statistics.median(h["ledger"] for h in hosts.values())
    baseline = len(batches) * phase2

    print(f"  rollout: {START_RUNS} {standing_up:.2f} s (of its {records_by_name[START_RUNS].seconds:.2f} s), {WAIT_HOSTS} {waiting:.2f} s, then {len(batches)} batches "
          f"({', '.join(f'{b} {records_by_name[b].seconds:.2f} s' for b in batches)}): {roll:.2f} s in all")
    print("  each host's host-release run (s; pick-up = Scheduled to Pending, process = Pending to Running, "
          "standby = Running to its turn, run = its turn to its end, ledger = its steps summed but the wait):")
    assert production.fleet is not None
    planned = [[host.name for host in batch] for batch in production.fleet.batches()]
    if len(planned) != len(batches):
        raise SetupError(f"the fleet's file plans {len(planned)} batches, the ledger has {batches}")
    breakdown: Counter[str] = Counter()
    breakdown[f"{START_RUNS}: every host's run created on its queue (in the prerequisites, beside its checks: "
              "the part none of them covered)"] = standing_up
    breakdown[f"{WAIT_HOSTS}: phase 2 waiting for processes still starting (taken, started while the prerequisites and phase 1 ran)"] = waiting
    for batch, members in zip(batches, planned):
        start, end = windows[batch]
        for host in members:
            h = hosts[host]
            scheduled, pending, running = h.get("scheduled", h["created"]), h.get("pending", h["created"]), h.get("running", h["created"])
            print(f"    {batch:<13} {host}: pick-up {pending - scheduled:5.2f}  process {running - pending:5.2f}  "
                  f"standby {h['turn'] - running:6.2f}  run {h['run']:6.2f}  ledger {h['ledger']:6.2f}  "
                  f"(batch end - its end {end - h['end']:5.2f})")
        # Where the batch's time goes beyond the slowest of its hosts' own work.
        slowest = max(members, key=lambda host: hosts[host]["run"])
        first_turn = min(hosts[host]["turn"] for host in members)
        last_done = max(hosts[host]["end"] for host in members)
        breakdown["drain (batch start to its first turn)"] += first_turn - start
        breakdown["host-release runs from their turn (the slowest of the batch)"] += hosts[slowest]["run"]
        breakdown["watch poll + back in rotation (after the last run ended)"] += end - last_done
        breakdown["other (turns given apart, hosts ending apart)"] += (
            (last_done - first_turn) - hosts[slowest]["run"])
    print("  where the rollout's time goes:")
    for what, seconds in breakdown.items():
        print(f"    {seconds:7.2f} s  {what}")
    print(f"  one host's phase 2: median host-release run from its turn {phase2:.2f} s; "
          f"median of its ledger steps summed {ledger_phase2:.2f} s")
    print(f"  rollout {roll:.2f} s vs {len(batches)} x {phase2:.2f} s = {baseline:.2f} s: {roll / baseline:.2f}x")
    return seen, {"roll": roll, "baseline": baseline, "phase2": phase2, "ledger_phase2": ledger_phase2,
                  "batches": len(batches), "breakdown": dict(breakdown)}, failed_attempts


def back_to_v1(stack: Any, box: Any) -> None:
    """Between rounds: the rollback deployment run by hand undoes the live v2."""
    from tests.e2e.operator import FINAL, run_of, wait_for
    from tests.e2e.test_fleet import start

    run_id = start(stack, "rollback/production", "reason=bench: back to v1 for the next round")
    state = wait_for(stack, run_id, FINAL, timeout=900)
    if state != "COMPLETED":
        raise SetupError(f"the rollback to v1 between rounds ended {state}: {run_of(stack, run_id)['state'].get('message')}")


# --- main ---------------------------------------------------------------------------------------

def result(figure: str, ours: float | None, baseline: float | None, target: str | None, met: bool | None,
           unit: str, note: str | None = None) -> None:
    ratio = round(ours / baseline, 3) if ours is not None and baseline else None
    row: dict[str, Any] = {"figure": figure, "ours": ours, "baseline": baseline, "ratio": ratio, "target": target,
                           "met": met, "unit": unit}
    if note:
        row["note"] = note
    print("RESULT " + json.dumps(row, ensure_ascii=False), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds (each: rollback, then deploy; minutes each)")
    parser.add_argument("--rate", type=float, default=240.0, help="requests per second, all clients together")
    parser.add_argument("--clients", type=int, default=16, help="keep-alive clients of the load")
    parser.add_argument("--attempts", type=int, default=3,
                        help="deploys of v2 tried before giving up when one fails (each failure is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (its logs) afterwards")
    args = parser.parse_args()
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        print("bench/fleet.py: the fleet sandbox needs HAProxy (Debian: apt-get install haproxy)", file=sys.stderr)
        unmeasured("HAProxy is not installed")
        return 2

    from deployctl.stack import Stack
    from sample_app import sandbox
    from tests.conftest import free_ports
    from tests.e2e.test_fleet import fleet_file
    from tests.flows.conftest import Sandbox, fast

    scratch = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    root = scratch / "sandbox"
    staging_port, production_port, server_port = free_ports(3)
    os.environ["DEPLOY_ENVIRONMENTS_DIR"] = str(root / "environments")
    databases = ExitStack()
    stack = Stack(home=scratch / "prefect", port=server_port, environments_dir=root / "environments",
                  database_url=prefect_server_database(databases), tied_to_caller=True)
    deploys: list[Observed] = []
    rollbacks: list[Observed] = []
    rollouts: list[dict[str, Any]] = []
    rollback_notes: list[str] = []
    rollbacks_completed = True
    retried: list[Attempt] = []
    error: str | None = None
    started = time.monotonic()
    try:
        # The sandbox builds while the server migrates its database and starts; the server is started
        # from this thread, whose end it is tied to. Files tuned as make_sandbox does: `fast`, then
        # fleet_file, before the apps start.
        with ThreadPoolExecutor(max_workers=1) as pool:
            building = pool.submit(sandbox.up, root, db="sqlite", log=lambda *_: None, hosts=len(HOSTS),
                                   ports={"staging": staging_port, "production": production_port},
                                   edit=lambda text: fleet_file(fast(text)))
            stack.home.mkdir(parents=True, exist_ok=True)
            stack.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"])
            stack.start_server(timeout=180)
            building.result()
        box = Sandbox(root, "sqlite")
        stack.up(log=lambda *_: None)
        print(f"fleet sandbox ({', '.join(HOSTS)} behind HAProxy at {box.config('production').service.base_url}) "
              f"and Prefect stack at {stack.api_url} up in {time.monotonic() - started:.0f} s", flush=True)
        for round_ in range(1, args.rounds + 1):
            if round_ > 1:
                print(f"\nround {round_}: the rollback deployment, run by hand, takes the fleet back to v1", flush=True)
                back_to_v1(stack, box)
            print(f"\nround {round_}, rollback: v2 with web-2 changed by hand, failing on batch 2, rolled back", flush=True)
            seen, unplanned, completed = rollback_scenario(stack, box, args, scratch)
            print_traffic("anything but 200 or the maintenance answer", seen, args.clients)
            rollbacks.append(seen)
            if unplanned:
                rollback_notes.append(unplanned)
            rollbacks_completed &= completed
            print(f"\nround {round_}, deploy: v2 rolled across the fleet", flush=True)
            seen, rollout, failed_attempts = deploy_scenario(stack, box, args, scratch)
            print_traffic("anything but 200", seen, args.clients)
            deploys.append(seen)
            rollouts.append(rollout)
            retried += failed_attempts
    except Exception as exc:  # report what was measured, then say why the rest could not be
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        traceback.print_exc()
    finally:
        try:
            stack.down(log=lambda *_: None)
        finally:
            if root.exists():
                sandbox.down(root, log=lambda *_: None)  # the apps and HAProxy
            databases.close()
            if args.keep:
                print(f"kept {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
          f"{len(deploys)} deploy(s), {len(rollbacks)} rollback(s) measured in {time.monotonic() - started:.0f} s)\n")
    note = f"not measured: {error}" if error else None
    maintenance = sum(1 for seen in rollbacks for r in seen.records if r.maintenance)
    if rollbacks:
        print(f"rollback: {maintenance} maintenance answers (503 with Retry-After), not counted as failures")
    if retried:
        print(f"{len(retried)} deploy attempt(s) of v2 failed before one completed (each rolled back, then tried "
              f"again; their requests are not in the deploy's figure):")
        for attempt in retried:
            print(f"  {attempt.state}, {len(attempt.seen.failed)} failed request(s), rollback "
                  f"{attempt.rollback_state}: {attempt.first_line()}")
    if deploys:
        failed = sum(len(seen.failed) for seen in deploys)
        result(FIGURE_DEPLOY, failed, 0, "0", failed == 0, "requests",
               f"{len(retried)} earlier attempt(s) failed and were retried: {retried[0].first_line()[:160]}"
               if retried else None)
    else:
        result(FIGURE_DEPLOY, None, 0, "0", False, "requests", note)
    if rollbacks:
        failed = sum(len(seen.failed) for seen in rollbacks)
        result(FIGURE_ROLLBACK, failed, 0, "0", failed == 0 and rollbacks_completed, "requests",
               "; ".join(rollback_notes) or None)
    else:
        result(FIGURE_ROLLBACK, None, 0, "0", False, "requests", note)
    if rollouts:
        ours = statistics.median(r["roll"] for r in rollouts)
        baseline = statistics.median(r["baseline"] for r in rollouts)
        result(FIGURE_ROLLOUT, round(ours, 2), round(baseline, 2), f"≤ {RATIO_TARGET:g}×",
               ours / baseline <= RATIO_TARGET, "s")
    else:
        result(FIGURE_ROLLOUT, None, None, f"≤ {RATIO_TARGET:g}×", False, "s", note)
    rates = [rate_of(seen.records) for seen in deploys + rollbacks]
    if rates:
        result(FIGURE_RATE, round(min(rates), 1), None, f"≥ {RATE_TARGET:g} requests/s", min(rates) >= RATE_TARGET,
               "requests/s")
    else:
        result(FIGURE_RATE, None, None, f"≥ {RATE_TARGET:g} requests/s", False, "requests/s", note)
    if error:
        print(f"bench/fleet.py: could not measure everything: {error}", file=sys.stderr)
        return 1
    return 0


def unmeasured(why: str) -> None:
    for figure, unit, target in ((FIGURE_DEPLOY, "requests", "0"), (FIGURE_ROLLBACK, "requests", "0"),
                                 (FIGURE_ROLLOUT, "s", f"≤ {RATIO_TARGET:g}×"),
                                 (FIGURE_RATE, "requests/s", f"≥ {RATE_TARGET:g} requests/s")):
        result(figure, None, 0 if unit == "requests" else None, target, False, unit, why)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
