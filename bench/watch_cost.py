"""Watch cost: the CPU seconds one hour of post-deploy watch costs, at the default 60 s interval.

A fresh sandbox and a real Prefect server; staging is deployed to v2, then the watch flow runs in a
process of its own for `--minutes` (default 10) at a sample every `--interval` seconds (default 5) while
a light load of users calls staging. The process's CPU (user + system, every thread: Prefect's log and
event workers included) is split three ways:

    start     flow start until the first sample (imports excluded: they are paid once per process)
    idle      the background threads with nothing to do, measured for 30 s after the watch ends
    samples   everything else, divided by the number of samples: the sample itself (health, metrics,
              judging) and what it sets off in Prefect's threads (its log line, the progress artifact)

and projected to an hour at the environment's interval: start + per-sample x (3600 / interval)
+ idle rate x 3600. The target: under 10 CPU seconds per watched hour.

    .venv/bin/python bench/watch_cost.py [--minutes 10] [--interval 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Runs in the measured process: the watch flow with its samples timed in CPU seconds.
MEASURED = r"""
import json, sys, time
started = time.process_time()
from flows import post_deploy_watch as module
imported = time.process_time()
spent = []
first = []
original = module.Watch.sample
def sample(self):
    if not first:
        first.append(time.process_time())
    before = time.process_time()
    try:
        return original(self)
    finally:
        spent.append(time.process_time() - before)
module.Watch.sample = sample
state = module.post_deploy_watch("staging", duration_seconds=int(sys.argv[1]), interval_seconds=int(sys.argv[2]),
                                 return_state=True)
ended = time.process_time()
time.sleep(30)  # the background threads on their own, with no sample to serve
idle = (time.process_time() - ended) / 30
print("MEASURED " + json.dumps({"imports": imported - started, "total": ended - imported,
                                "start": first[0] - imported, "samples": spent, "idle_rate": idle,
                                "state": state.name}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=int, default=5)
    args = parser.parse_args()

    from deployctl.stack import Stack
    from sample_app import sandbox
    from tests.conftest import free_ports
    from tests.traffic import Traffic

    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    root = work / "sandbox"
    staging_port, production_port, server_port = free_ports(3)
    sandbox.up(root, ports={"staging": staging_port, "production": production_port}, log=lambda *_: None)
    environments = root / "environments"
    for env in ("staging", "production"):
        path = environments / f"{env}.toml"
        text = path.read_text().replace("grace_seconds = 5", "grace_seconds = 1")
        text = text.replace("[watch]\nenabled = true", "[watch]\nenabled = false")  # watched below, by hand
        path.write_text(text)
    stack = Stack(home=work / "prefect", port=server_port, environments_dir=environments)
    try:
        stack.up(log=lambda *_: None)
        env = stack.env()
        deploy = subprocess.run(
            [sys.executable, "-c", "from flows.production_deployment import production_deployment as d; "
             "d(environment='staging', ref='v2', reason='bench: watch cost')"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if deploy.returncode != 0:
            print(deploy.stdout[-2000:], deploy.stderr[-3000:], file=sys.stderr)
            raise RuntimeError("the deploy of v2 to staging failed")
        duration = int(args.minutes * 60)
        print(f"watching staging for {duration} s, a sample every {args.interval} s, under light traffic")
        with Traffic(f"http://127.0.0.1:{staging_port}", clients=1, pause=0.1, analyze=False) as traffic:
            watch = subprocess.run([sys.executable, "-c", MEASURED, str(duration), str(args.interval)], env=env,
                                   cwd=ROOT, capture_output=True, text=True, timeout=duration + 600)
        line = next((l for l in watch.stdout.splitlines() if l.startswith("MEASURED ")), None)
        if watch.returncode != 0 or line is None:
            print(watch.stdout[-2000:], watch.stderr[-3000:], file=sys.stderr)
            raise RuntimeError("the watch did not run to its end")
        measured = json.loads(line.removeprefix("MEASURED "))
    finally:
        stack.down(log=lambda *_: None)
        sandbox.down(root, log=lambda *_: None)

    samples = measured["samples"]
    in_samples = sum(samples)
    idle_rate = measured["idle_rate"]
    # What the samples set off in the background (log lines and artifacts shipped by Prefect's threads)
    # is theirs too: everything but the start and the idle rate is divided among them.
    per_sample = (measured["total"] - measured["start"] - idle_rate * duration) / len(samples)
    idle = idle_rate * duration
    default_interval = 60
    hour = measured["start"] + per_sample * (3600 / default_interval) + idle_rate * 3600
    print(f"watch ended {measured['state']}; {len(samples)} samples; traffic: {dict(traffic.statuses)}")
    print(f"imports (once per process)  {measured['imports']:.2f} s CPU")
    print(f"start                       {measured['start']:.2f} s CPU")
    print(f"samples                     {per_sample * len(samples):.2f} s CPU, {per_sample * 1000:.1f} ms each "
          f"({in_samples / len(samples) * 1000:.1f} ms inside the sample itself)")
    print(f"idle (measured after)       {idle_rate * 3600:.2f} s CPU an hour ({idle:.2f} s over the {duration} s)")
    print(f"one watched hour at {default_interval} s    {hour:.2f} s CPU "
          f"(at {args.interval} s: {measured['start'] + per_sample * 3600 / args.interval + idle_rate * 3600:.2f} s)")
    print("RESULT " + json.dumps({
        "figure": f"watch CPU per watched hour ({default_interval} s interval; measured {args.minutes:g} min at "
                  f"{args.interval} s)",
        "ours": round(hour, 2), "baseline": None, "ratio": None, "target": "< 10 s/h", "met": hour < 10,
        "unit": "CPU s"}))
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
