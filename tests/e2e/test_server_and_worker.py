"""End to end, as an operator runs it: a real `prefect server`, a process worker, `prefect deployment run`,
approvals answered with `deployctl approve`, and the sandbox's production ending on v2."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployctl.stack import Stack
from tests.conftest import free_ports
from tests.flows.conftest import Sandbox, make_sandbox

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Sandbox]]:
    boxes = make_sandbox(tmp_path_factory)
    box = next(boxes)
    (port,) = free_ports(1)
    server = Stack(home=tmp_path_factory.mktemp("prefect-home"), port=port, environments_dir=box.environments)
    try:
        server.up(log=lambda *_: None)
        yield server, box
    finally:
        server.down(log=lambda *_: None)
        next(boxes, None)


def trigger(stack: Stack, name: str, ref: str) -> str:
    out = stack.run([sys.executable, "-m", "prefect", "deployment", "run", name, "--param", f"ref={ref}"])
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert match, out
    return match[1]


def state_of(stack: Stack, run_id: str) -> str:
    response = httpx.get(f"{stack.api_url}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    state = response.json()["state"]
    return state["name"] if state["type"] == "PAUSED" else state["type"]


def wait_for(stack: Stack, run_id: str, wanted: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = state_of(stack, run_id)
        if state in wanted:
            return state
        time.sleep(1)
    raise AssertionError(f"run {run_id} stayed {state_of(stack, run_id)}, wanted {wanted}; "
                         f"worker log: {(stack.home / 'worker.log').read_text()[-3000:]}")


def approve(stack: Stack, run_id: str, name: str, role: str) -> None:
    result = subprocess.run([str(Path(sys.executable).with_name("deployctl")), "approve", run_id, "--as", name,
                             "--role", role], env=stack.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"approved production: v2 as {name} ({role})" in result.stdout


def test_deploy_v2_to_staging_then_production_through_the_worker(stack: tuple[Stack, Sandbox]) -> None:
    server, box = stack
    staging_run = trigger(server, "production-deployment/staging", "v2")
    assert wait_for(server, staging_run, FINAL) == "COMPLETED"

    run_id = trigger(server, "production-deployment/production", "v2")
    for name, role in (("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner")):
        assert wait_for(server, run_id, {"Paused"} | FINAL) == "Paused"
        approve(server, run_id, name, role)
        time.sleep(2)
    assert wait_for(server, run_id, FINAL) == "COMPLETED"

    production = box.config("production")
    health = httpx.get(production.service.base_url + "/api/health", timeout=5).json()
    assert health["version"] == box.sha("v2") and health["status"] == "ok"

    status = subprocess.run([str(Path(sys.executable).with_name("deployctl")), "status", "production"],
                            env=server.env(), capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"v2\s+{box.sha('v2')[:12]}\s+succeeded", status.stdout), status.stdout

    artifacts = httpx.post(f"{server.api_url}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
                           timeout=10).json()
    keys = {a["key"] for a in artifacts}
    assert {"deploy-production-summary", "deploy-production-checks", "deploy-production-progress"} <= keys
    summary = next(a for a in artifacts if a["key"] == "deploy-production-summary")["data"]
    assert "Dana Whitfield" in summary and "Sam Okafor" in summary and "succeeded" in summary
