"""Orchestration overhead: a production deploy of v1 -> v2 through the Prefect flow, against
bench/baseline, a plain script doing the same operations, each on a fresh sandbox, in one run.

Each round brings up two sandboxes, puts staging at v2 in both (the flow in one, the script in the
other; not timed), then times the production deploy of each, alternating which goes first. The flow
runs in this process against a Prefect test server started beforehand; the two approvals are given
as soon as the run pauses for them (their wait is counted). The post-deploy watch does not run: the
test server has no deployment of it.

Both sides run with the sandbox's environment files, except that the release's own test command is
off in both (`test_command = []`): it is the same subprocess either way and would only dilute the
ratio. The security scan, the migration rehearsal, the staging check, the migration status, the
verified backup, the startup-log grace and the performance sample run in both.

Printed: both wall times and their ratio per round, and the figure from their medians; where the
flow's time goes (its phases and steps from the ledger, the time between steps, the script's steps
side by side); with --profile, the cProfile of this process during the flow's deploys (which then
run slower).

    .venv/bin/python bench/overhead.py [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from bench._harness import approve_when_paused, bench_sandbox  # noqa: E402 - the path above makes it importable
from tests.conftest import free_ports  # noqa: E402

TARGET_RATIO = 1.3
# What bench/baseline runs besides git and the app's interpreter.
BASELINE_TOOLS = ("bash", "curl", "jq", "bc", "sqlite3")
# The script's steps and the flow's steps that do the same work.
COUNTERPARTS = {
    "prerequisites-git": ("fetch-release", "resolve-release", "check-merged-to-main", "check-workspace",
                          "run-release-tests"),
    "security-scan": ("run-security-scan",),
    "migration-rehearsal": ("test-migrations",),
    "staging-check": ("verify-staging", "check-staging-health"),
    "migration-status": ("check-migrations",),
    "backup": ("backup-database", "record-baseline", "verify-environment"),
    "checkout": ("pull-release",),
    "migrate": ("run-migrations",),
    "canary": ("check-canary",),
    "reload": ("restart-application",),
    "startup-log-watch": ("watch-startup-logs",),
    "health": ("check-health",),
    "critical-paths": ("run-critical-path-tests",),
    "performance": ("check-performance",),
}


def fresh_sandbox(parent: Path, name: str) -> Path:
    return bench_sandbox(parent / name)


def run_flow(root: Path, environment: str, profiler: cProfile.Profile | None = None) -> float:
    from flows.production_deployment import production_deployment

    os.environ["DEPLOY_ENVIRONMENTS_DIR"] = str(root / "environments")
    if environment == "production":
        approve_when_paused()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        production_deployment(environment=environment, ref="v2", reason="bench: overhead")
    finally:
        if profiler is not None:
            profiler.disable()
    return time.perf_counter() - started


def run_baseline(root: Path, environment: str, scratch: Path) -> tuple[float, dict[str, float]]:
    from deployments.config import load_environment_file
    from deployments.secrets import resolve_app_environment

    config = load_environment_file(root / "environments" / f"{environment}.toml")
    app_env = resolve_app_environment(config)
    env_file = scratch / f"{root.name}-{environment}.env"
    env_file.write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in app_env.items()))
    staging = (load_environment_file(root / "environments" / "staging.toml").service.base_url
               if config.prerequisites.staging_environment else "")
    variables = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LC_ALL": "C",
        "WORKSPACE": str(config.source.workspace), "PYTHON": str(config.service.python),
        "BASE_URL": config.service.base_url, "PID_FILE": str(config.service.pid_file),
        "LOG": str(config.service.startup_log),
        "DB": app_env[config.database.app_variable].removeprefix("sqlite:///"),
        "BACKUPS": str(config.backups.directory), "GRACE": f"{config.service.grace_seconds:g}",
        "STABLE_CHECKS": str(config.health.stable_checks), "STABLE_SECONDS": f"{config.health.stable_seconds:g}",
        "STATE": str(scratch), "APP_ENV": str(env_file), "STAGING_URL": staging,
        "ERRORS": "|".join(config.service.error_patterns),
        "CANARY_PORT": str(free_ports(1)[0]) if config.service.canary is not None else "",
    }
    started = time.perf_counter()
    result = subprocess.run([str(PROJECT / "bench" / "baseline"), "v2"], env=variables, capture_output=True,
                            text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"bench/baseline failed on {environment}:\n{result.stdout}\n{result.stderr}")
    steps = {}
    for line in result.stdout.splitlines():
        if line.startswith("STEP "):
            _, name, seconds = line.split()
            steps[name] = float(seconds)
    return elapsed, steps


def flow_record(root: Path) -> tuple[Any, list[tuple[str, float, float]]]:
    """The production release and its steps as (name, started, finished) in epoch seconds."""
    from datetime import timezone

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from records.ledger import Ledger, Step

    def epoch(moment: Any) -> float:
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()

    ledger = Ledger.for_state_dir(root / "state")
    release = ledger.releases("production")[0]
    with Session(ledger.engine) as session:
        rows = session.scalars(select(Step).where(Step.release_id == release.id).order_by(Step.id))
        steps = [(s.name, epoch(s.started_at), epoch(s.finished_at or s.started_at)) for s in rows]
    return release, steps


def one_round(index: int, parent: Path, profiler: cProfile.Profile | None) -> dict[str, Any]:
    flow_root = fresh_sandbox(parent, f"flow-{index}")
    script_root = fresh_sandbox(parent, f"script-{index}")
    scratch = parent / f"script-{index}-state"
    scratch.mkdir()
    try:
        run_flow(flow_root, "staging")
        run_baseline(script_root, "staging", scratch)
        if index % 2 == 0:
            flow_seconds = run_flow(flow_root, "production", profiler)
            script_seconds, script_steps = run_baseline(script_root, "production", scratch)
        else:
            script_seconds, script_steps = run_baseline(script_root, "production", scratch)
            flow_seconds = run_flow(flow_root, "production", profiler)
        release, steps = flow_record(flow_root)
        if release.outcome != "succeeded":
            raise RuntimeError(f"the flow's deploy ended {release.outcome}: {release.error}")
        return {"flow": flow_seconds, "script": script_seconds, "phases": dict(release.timings),
                "flow_steps": [(name, end - start) for name, start, end in steps], "script_steps": script_steps,
                "gaps": [(f"{a[0]} -> {b[0]}", b[1] - a[2]) for a, b in zip(steps, steps[1:])]}
    finally:
        from sample_app import sandbox

        for root in (flow_root, script_root):
            sandbox.down(root, log=lambda *_: None)


def report(rounds: list[dict[str, Any]], profiler: cProfile.Profile | None) -> None:
    print(f"\n{'round':<6} {'flow':>9} {'script':>9} {'ratio':>6}   {'of which approvals':>18}")
    for i, r in enumerate(rounds):
        print(f"{i + 1:<6} {r['flow']:>7.2f} s {r['script']:>7.2f} s {r['flow'] / r['script']:>6.2f}   "
              f"{r['phases'].get('approvals', 0.0):>16.2f} s")
    last = rounds[-1]
    print("\nflow phases (ledger), last round:")
    phases = last["phases"]
    for name, seconds in phases.items():
        print(f"  {name:<32} {seconds:>7.2f} s")
    print(f"  {'(outside the phases)':<32} {last['flow'] - sum(phases.values()):>7.2f} s")
    in_steps = sum(seconds for _, seconds in last["flow_steps"])
    print(f"\nflow: {in_steps:.2f} s inside its {len(last['flow_steps'])} steps, "
          f"{last['flow'] - in_steps:.2f} s between them (task and subflow runs, ledger, lock, approvals, "
          f"notifications, artifacts)")
    print("  largest gaps between two steps:")
    for name, seconds in sorted(last["gaps"], key=lambda gap: -gap[1])[:6]:
        print(f"    {seconds:6.2f} s  {name}")
    print(f"\n{'the same work':<22} {'flow steps':>11} {'script':>9}")
    flow_by_name: dict[str, float] = {}
    for name, seconds in last["flow_steps"]:
        flow_by_name[name] = flow_by_name.get(name, 0.0) + seconds
    for script_step, flow_steps in COUNTERPARTS.items():
        flow_time = sum(flow_by_name.get(name, 0.0) for name in flow_steps)
        print(f"  {script_step:<20} {flow_time:>9.2f} s {last['script_steps'].get(script_step, 0.0):>7.2f} s"
              f"   ({', '.join(flow_steps)})")
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        print("\ncProfile of the flow's production deploys (cumulative, top 40):")
        print(out.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile the flow's production deploys")
    args = parser.parse_args()
    missing = [tool for tool in BASELINE_TOOLS if shutil.which(tool) is None]
    if missing:
        print("RESULT " + json.dumps({"figure": "orchestration-overhead", "ours": None, "baseline": None,
                                      "ratio": None, "target": f"≤ {TARGET_RATIO:g}×", "met": False, "unit": "s",
                                      "note": f"bench/baseline needs {', '.join(missing)} (apt-get install "
                                              f"{' '.join(missing)})"}, ensure_ascii=False))
        return 1

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    import flows.production_deployment  # noqa: F401  (imported before any timing)

    parent = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    profiler = cProfile.Profile() if args.profile else None
    rounds = []
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
                prefect_test_harness(server_startup_timeout=90):
            for index in range(args.rounds):
                rounds.append(one_round(index, parent, profiler))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    report(rounds, profiler)
    # Medians: one round slowed down by the rest of the machine should not decide the figure.
    flow = statistics.median(r["flow"] for r in rounds)
    script = statistics.median(r["script"] for r in rounds)
    ratio = flow / script
    print(f"\nmedian of {len(rounds)} round(s): flow {flow:.2f} s, script {script:.2f} s, ratio {ratio:.2f}"
          + (" (flow under cProfile)" if profiler else "")
          + f"; machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("RESULT " + json.dumps({"figure": "orchestration-overhead", "ours": round(flow, 2),
                                  "baseline": round(script, 2), "ratio": round(ratio, 2),
                                  "target": f"≤ {TARGET_RATIO:g}×", "met": ratio <= TARGET_RATIO, "unit": "s"},
                                 ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
