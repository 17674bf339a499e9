"""What the deploy benchmarks share: a sandbox of their own, and approvers who answer at once.

Imported by the scripts in bench/ (which put the project root on sys.path), never run itself: its name
starts with `_`, so bench/run does not take it for a benchmark.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import free_ports

APPROVERS = (("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner"))


def without_release_tests(environment_file: str) -> str:
    """The release's own test suite off: the same subprocess whether orchestrated or not, and it runs
    before anything in production changes."""
    return re.sub(r"^test_command = .*$", "test_command = []", environment_file, flags=re.M)


def bench_sandbox(root: Path, edit: Callable[[str], str] = without_release_tests) -> Path:
    """A fresh sandbox at `root` on free ports, each environment file passed through `edit`."""
    from sample_app import sandbox

    staging, production = free_ports(2)
    sandbox.up(root, ports={"staging": staging, "production": production}, log=lambda *_: None)
    for env in ("staging", "production"):
        path = root / "environments" / f"{env}.toml"
        path.write_text(edit(path.read_text()))
    return root


def approve_when_paused(count: int = len(APPROVERS)) -> threading.Thread:
    """Answers each pause of a deploy run as soon as it is seen (once per pause key), as the first
    `count` approvers would; gives up after five minutes."""
    def answer() -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
        from prefect.flow_runs import resume_flow_run

        pending = [{"approver": name, "role": role, "decision": "approve", "comment": "bench"}
                   for name, role in APPROVERS[:count]]
        answered: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 300
        with get_client(sync_client=True) as client:
            while pending and time.monotonic() < deadline:
                paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
                for run in paused:
                    key = (str(run.id), str(run.state.state_details.pause_key if run.state else ""))
                    if key not in answered:
                        answered.add(key)
                        resume_flow_run(run.id, run_input=pending.pop(0))
                        break
                time.sleep(0.1)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread
