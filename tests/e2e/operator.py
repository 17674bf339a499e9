"""Driving a real Prefect server and worker as an operator does: CLI commands and the REST API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest

from deployctl.stack import Stack
from tests.conftest import free_ports, prefect_server_database
from tests.flows.conftest import Sandbox, make_sandbox
from tests.prefect_servers import drain_prefect_queues

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DEPLOYCTL = str(Path(sys.executable).with_name("deployctl"))


def stack_with_sandbox(tmp_path_factory: pytest.TempPathFactory, db: str = "sqlite",
                       server_database_url: str | None = None,
                       prepare: Callable[[Sandbox], None] | None = None, hosts: int = 0,
                       edit: Callable[[str], str] | None = None) -> Iterator[tuple[Stack, Sandbox]]:
    """A sandbox and a Prefect stack serving it; `server_database_url` puts the server on that database,
    `prepare` edits the sandbox's environment files before any flow reads them.

    The sandbox builds while the server starts (both take about ten seconds); the pool, the deployments
    and the workers follow once the sandbox's files are whole: the stack reads them (a fleet's hosts
    name its queues), and a file read while the sandbox rewrites it can be half written."""
    root = tmp_path_factory.mktemp("sbx") / "sandbox"
    boxes = make_sandbox(tmp_path_factory, db, root=root, hosts=hosts, edit=edit)
    (port,) = free_ports(1)
    home, database = prefect_server_database(tmp_path_factory)
    server = Stack(home=home, port=port, environments_dir=root / "environments",
                   database_url=server_database_url or database, tied_to_caller=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        building = pool.submit(next, boxes)
        try:
            server.start_server()
            box = building.result()
            if prepare is not None:
                prepare(box)
            server.up(log=lambda *_: None)
            yield server, box
        finally:
            drain_prefect_queues()
            server.down(log=lambda *_: None)
            wait([building])
            next(boxes, None)


@contextmanager
def on_server(stack: Stack) -> Iterator[None]:
    """Prefect calls made in this process (a lock probe, say) go to `stack`'s server, not the test
    process's own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        yield


def trigger(stack: Stack, name: str, ref: str) -> str:
    out = stack.run([sys.executable, "-m", "prefect", "deployment", "run", name, "--param", f"ref={ref}"])
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert match, out
    return match[1]


def run_of(stack: Stack, run_id: str) -> dict:  # type: ignore[type-arg]
    response = httpx.get(f"{stack.api_url}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def state_of(stack: Stack, run_id: str) -> str:
    state = run_of(stack, run_id)["state"]
    return state["name"] if state["type"] == "PAUSED" else state["type"]


def wait_for(stack: Stack, run_id: str, wanted: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = state_of(stack, run_id)
        if state in wanted:
            return state
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} stayed {state_of(stack, run_id)}, wanted {wanted}; "
                         f"worker log: {(stack.home / 'worker.log').read_text()[-3000:]}")


def how_it_ended(stack: Stack, run_id: str) -> str:
    """A run's final state with its message, and the worker's last words: what a failed assertion shows."""
    run = httpx.get(f"{stack.api_url}/flow_runs/{run_id}", timeout=10).json()
    state = run.get("state") or {}
    return (f"run {run.get('name')} ended {state.get('type')}: {state.get('message')}; worker log: "
            f"{(stack.home / 'worker.log').read_text()[-3000:]}")


def flow_runs(stack: Stack, flow_name: str) -> list[dict]:  # type: ignore[type-arg]
    body = {"flows": {"name": {"any_": [flow_name]}}, "sort": "EXPECTED_START_TIME_DESC"}
    return httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, timeout=10).json()  # type: ignore[no-any-return]


def flow_process(run_id: str) -> int | None:
    """The pid of the process the worker started for this flow run (Prefect's engine). What it starts
    (an app, a migration) inherits its environment, marker and all, and pids wrap around (at 32768
    here), so neither the marker nor the lowest pid is enough: the engine's is the marked process that
    runs Prefect and whose parent is not marked."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    engines: dict[int, int] = {}
    marked: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            marked.add(int(entry))
            if b"prefect" in Path(f"/proc/{entry}/cmdline").read_bytes():
                stat = Path(f"/proc/{entry}/stat").read_text()
                engines[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except OSError:
            continue
    return next((pid for pid, parent in engines.items() if parent not in marked), None)


def kill_flow_process(run_id: str) -> int:
    pid = flow_process(run_id)
    assert pid is not None, f"no process runs flow run {run_id}"
    os.kill(pid, signal.SIGKILL)
    return pid


def deployctl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEPLOYCTL, *args], env=stack.env(), capture_output=True, text=True, timeout=120)
