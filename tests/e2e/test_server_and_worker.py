"""End to end, as an operator runs it: a real `prefect server`, a process worker, `prefect deployment run`,
approvals answered with `deployctl approve`, and the sandbox's production ending on v2."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from deployctl.stack import Stack
from tests.e2e.operator import FINAL, deployctl, stack_with_sandbox, trigger, wait_for
from tests.flows.conftest import Sandbox

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Sandbox]]:
    yield from stack_with_sandbox(tmp_path_factory)


def approve(stack: Stack, run_id: str, name: str, role: str) -> None:
    result = deployctl(stack, "approve", run_id, "--as", name, "--role", role)
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

    status = deployctl(server, "status", "production")
    assert status.returncode == 0, status.stderr
    assert re.search(rf"v2\s+{box.sha('v2')[:12]}\s+succeeded", status.stdout), status.stdout

    artifacts = httpx.post(f"{server.api_url}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
                           timeout=10).json()
    keys = {a["key"] for a in artifacts}
    assert {"deploy-production-summary", "deploy-production-checks", "deploy-production-progress"} <= keys
    summary = next(a for a in artifacts if a["key"] == "deploy-production-summary")["data"]
    assert "Dana Whitfield" in summary and "Sam Okafor" in summary and "succeeded" in summary
