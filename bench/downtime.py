"""Downtime: what keep-alive clients of production see while it is deployed, and while a bad release
is rolled back.

Runs on a fresh sandbox with a Prefect test server; the deploys run in this process, the load in a
child process (so neither slows the other through the GIL):

  deploy    production v1 -> v2 (backup, migration 0002, USR2 handoff, post-deployment checks)
  rollback  production v2 -> v4, which fails phase 3 on production's data and is rolled back by the
            deploy's own hook (maintenance mode, downgrade, v2's code, handoff, checks)

Load: CLIENTS keep-alive clients (one httpx.Client each, in threads), paced to RATE requests/s in all,
from before the deploy starts until it has returned. Each client goes round its list: GET /health,
and production's critical paths as its environment file configures them ([[critical_paths]], bodies
filled from one scrape made before the load starts); one client also reads /api/health. A request
fails when it gets no answer (reset, disconnect, timeout) or a 5xx. During a rollback, 503 with
Retry-After is the maintenance window (and /api/health's 503 "maintenance", exempt from the
Retry-After answer, counts with it); the window is measured from the first to the last such answer.

The environment files are the sandbox's, with the release's own test command off (it runs before
anything in production changes, so it cannot drop a request).

    .venv/bin/python bench/downtime.py [--rate 240] [--clients 16] [--only deploy]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Load, approve_when_paused, bench_sandbox  # noqa: E402 - the path above makes it importable

LIVENESS_PER_ROUND = 3
WINDOW_TARGET_SECONDS = 5.0
RATE_TARGET = 200.0


@dataclass(frozen=True)
class Request:
    sent: float
    done: float
    method: str
    path: str
    status: int | None
    retry_after: str | None
    error: str | None
    body: str

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500

    @property
    def maintenance(self) -> bool:
        if self.status != 503:
            return False
        return self.retry_after is not None or '"status":"maintenance"' in self.body


def load_rounds(config: Any, clients: int) -> list[list[tuple[str, str, Any]]]:
    """Each client's list: liveness, then every critical path with bodies filled from one scrape."""
    import httpx

    from tasks.smoke import fill

    answers: dict[str, Any] = {}
    paths: list[tuple[str, str, Any]] = []
    with httpx.Client(base_url=config.service.base_url, timeout=10) as client:
        for check in config.critical_paths:
            body = fill(check.json_body, answers) if check.json_body is not None else None
            answers[check.name] = client.request(check.method, check.path, json=body).json()
            paths.append((check.method, check.path, body))
    liveness = ("GET", config.health.path, None)
    rounds = []
    for i in range(clients):
        calls = [liveness] * LIVENESS_PER_ROUND + [paths[i % len(paths)]]
        # /api/health writes a probe file named after the worker's pid: two at once in one worker
        # race each other (a jobapp bug, not a deploy's), so only one client asks it.
        if i == 0:
            calls.append(("GET", config.health.api_path, None))
        rounds.append(calls)
    return rounds


# --- deploys ------------------------------------------------------------------------------------

def deploy(environment: str, ref: str, approvals: int) -> tuple[str, float, float]:
    from deployments.errors import DeployError
    from flows.production_deployment import production_deployment

    if approvals:
        approve_when_paused(approvals)
    started = time.time()
    try:
        production_deployment(environment=environment, ref=ref, reason="bench: downtime")
        outcome = "succeeded"
    except DeployError as exc:
        outcome = f"failed at {exc.step}"
    return outcome, started, time.time()


def step_times(ledger: Any, release_id: int) -> list[tuple[str, float, float | None]]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from records.ledger import Step

    with Session(ledger.engine) as session:
        rows = session.scalars(select(Step).where(Step.release_id == release_id).order_by(Step.id))
        return [(s.name, _epoch(s.started_at), _epoch(s.finished_at) if s.finished_at else None) for s in rows]


def _epoch(moment: Any) -> float:
    from datetime import timezone

    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


# --- report -------------------------------------------------------------------------------------

def step_at(steps: list[tuple[str, float, float | None]], moment: float) -> str:
    current = "-"
    for name, start, _end in steps:
        if start <= moment:
            current = name
    return current


def describe_failure(request: Request) -> str:
    if request.error:
        return request.error.split(":")[0] + (": reset" if "reset" in request.error.lower() else "")
    match = re.search(r'"status":"(\w+)"', request.body)
    detail = f" ({match[1]})" if match else ""
    return f"HTTP {request.status}{detail}"


def rate_of(records: list[Request]) -> float:
    span = records[-1].done - records[0].sent
    return len(records) / span if span > 0 else 0.0


def latency_line(records: list[Request]) -> str:
    seconds = sorted(r.done - r.sent for r in records)
    pick = lambda q: seconds[min(len(seconds) - 1, int(q * len(seconds)))] * 1000  # noqa: E731
    return f"latency p50 {pick(0.5):.0f} ms, p99 {pick(0.99):.0f} ms, max {seconds[-1] * 1000:.0f} ms"


def report_failures(records: list[Request], steps: list[tuple[str, float, float | None]], t0: float) -> None:
    failed = [r for r in records if r.failed]
    by_kind = Counter((describe_failure(r), r.path, step_at(steps, r.sent)) for r in failed)
    for (kind, path, step), count in sorted(by_kind.items(), key=lambda item: -item[1]):
        times = [r.sent - t0 for r in failed if (describe_failure(r), r.path, step_at(steps, r.sent)) == (kind, path, step)]
        print(f"    {count:>5}  {kind:<34} {path:<30} during {step:<26} t={min(times):.1f}..{max(times):.1f} s")


def result(figure: str, ours: float, baseline: float | None, target: str, met: bool, unit: str) -> None:
    ratio = round(ours / baseline, 3) if baseline else None
    print("RESULT " + json.dumps({"figure": figure, "ours": ours, "baseline": baseline, "ratio": ratio,
                                  "target": target, "met": met, "unit": unit}, ensure_ascii=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=240.0, help="requests per second, all clients together")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--only", choices=["deploy", "rollback"], help="run one part only")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox directory (its logs) afterwards")
    args = parser.parse_args()

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from deployments.config import load_environment
    from sample_app import sandbox
    from records.ledger import Ledger

    scratch = Path(tempfile.mkdtemp(prefix="bench-downtime-"))
    root = bench_sandbox(scratch / "sandbox")
    os.environ["DEPLOY_ENVIRONMENTS_DIR"] = str(root / "environments")
    config = load_environment("production")
    ledger = Ledger.for_state_dir(root / "state")
    figures: list[tuple[str, float, float | None, str, bool, str]] = []
    rates: list[float] = []
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
                prefect_test_harness(server_startup_timeout=90):
            deploy("staging", "v2", approvals=0)
            if args.only == "rollback":
                deploy("production", "v2", approvals=2)
            else:
                load = Load(config.service.base_url, load_rounds(config, args.clients), args.rate, scratch,
                            agent="bench-downtime")
                outcome, t0, t1 = deploy("production", "v2", approvals=2)
                records = [Request(*row) for row in load.stop()]
                release = ledger.releases("production")[0]
                steps = step_times(ledger, release.id)
                during = [r for r in records if t0 <= r.sent <= t1]
                failed = [r for r in records if r.failed]
                rates.append(rate_of(records))
                print(f"\ndeploy v1 -> v2 under load: {outcome} in {t1 - t0:.1f} s; {len(records)} requests at "
                      f"{rate_of(records):.0f}/s from {args.clients} keep-alive clients ({len(during)} while the "
                      f"deploy ran); {latency_line(records)}")
                print(f"  failed: {len(failed)}")
                report_failures(records, steps, t0)
                figures.append(("downtime-deploy-failed-requests", len(failed), None, "0 failed",
                                not failed and outcome == "succeeded", "requests"))
            if args.only == "deploy":
                return _finish(figures, rates)

            deploy("staging", "v4", approvals=0)
            load = Load(config.service.base_url, load_rounds(config, args.clients), args.rate, scratch,
                        agent="bench-downtime")
            outcome, t0, t1 = deploy("production", "v4", approvals=2)
            records = [Request(*row) for row in load.stop()]
            rates.append(rate_of(records))
            failed_release = ledger.releases("production")[0]
            rollback = next((r for r in ledger.all_releases("production") if r.rollback_of == failed_release.id), None)
            steps = step_times(ledger, failed_release.id) + (step_times(ledger, rollback.id) if rollback else [])
            steps.sort(key=lambda s: s[1])
            maintenance = [r for r in records if r.status == 503 and r.retry_after is not None]
            first = maintenance[0].sent if maintenance else None
            last = maintenance[-1].done if maintenance else None
            inside = [r for r in records if r.failed and first is not None and first <= r.sent <= last]
            outside = [r for r in records if r.failed and r not in inside]
            window = (last - first) if maintenance else 0.0
            unanswered = [r for r in records if r.status is None]
            print(f"\nrollback of v4 under load: deploy {outcome}; rollback "
                  f"{failed_release.outcome if rollback else 'did not run'}; {len(records)} requests at "
                  f"{rate_of(records):.0f}/s; {latency_line(records)}")
            if maintenance:
                print(f"  maintenance window: {window:.2f} s (first 503 with Retry-After at t={first - t0:.1f} s, "
                      f"last at t={last - t0:.1f} s), {len(inside)} requests answered in it")
            print(f"  failed outside the window: {len(outside)}; without an answer (whole run): {len(unanswered)}")
            report_failures(outside, steps, t0)
            print("  steps (s since the deploy started):")
            for name, start, end in steps:
                print(f"    {start - t0:7.2f} {(end or start) - t0:7.2f}  {name}")
            figures.append(("downtime-rollback-failed-outside-maintenance", len(outside), None,
                            "0 failed outside the maintenance window", not outside, "requests"))
            figures.append(("downtime-rollback-unanswered-requests", len(unanswered), None, "0 failed",
                            not unanswered, "requests"))
            figures.append(("downtime-rollback-maintenance-window", round(window, 2), None,
                            f"≤ {WINDOW_TARGET_SECONDS:g} s", bool(maintenance) and window <= WINDOW_TARGET_SECONDS,
                            "s"))
            return _finish(figures, rates)
    finally:
        sandbox.down(root, log=lambda *_: None)
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _finish(figures: list[tuple[str, float, float | None, str, bool, str]], rates: list[float]) -> int:
    print(f"\n(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end)\n")
    result("downtime-load-rate", round(min(rates), 1), None, f"≥ {RATE_TARGET:g} requests/s",
           min(rates) >= RATE_TARGET, "requests/s")
    for figure in figures:
        result(*figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
