"""End to end, as an operator runs it: a real `prefect server` on PostgreSQL, a process worker, `prefect
deployment run`, approvals answered with `deployctl approve`, the sandbox's production ending on v2, and
the post-deploy watch each deploy schedules (shortened to 20 s here) ending clean.

The crash tests (tests/faults/test_crash.py) run the same stack on the server's default SQLite."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from deployctl.stack import Stack
from records.ledger import Ledger
from tests.e2e.operator import FINAL, deployctl, flow_runs, run_of, stack_with_sandbox, trigger, wait_for
from tests.flows.conftest import Sandbox

pytestmark = pytest.mark.slow


def short_watch(box: Sandbox) -> None:
    for env in ("staging", "production"):
        box.edit(env, lambda text: text.replace("duration_seconds = 7200", "duration_seconds = 20").replace(
            "interval_seconds = 60", "interval_seconds = 2"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str) -> Iterator[tuple[Stack, Sandbox]]:
    """With PostgreSQL reachable (postgres_admin_url fails or skips otherwise), the server's database is
    a PostgreSQL copy of the run's migrated template (tests/prefect_servers.py)."""
    yield from stack_with_sandbox(tmp_path_factory, prepare=short_watch)


def approve(stack: Stack, run_id: str, name: str, role: str) -> None:
    result = deployctl(stack, "approve", run_id, "--as", name, "--role", role)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("approved production: v2 (") and f"as {name} ({role})" in result.stdout


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


def test_the_watch_runs_after_the_deploy_linked_to_it(stack: tuple[Stack, Sandbox]) -> None:
    server, box = stack
    deploy_run = next(r for r in flow_runs(server, "production-deployment")
                      if r["parameters"]["environment"] == "production" and r["state"]["type"] == "COMPLETED")
    watches = [r for r in flow_runs(server, "post-deploy-watch") if r["parameters"].get("deploy_run_id") == deploy_run["id"]]
    assert len(watches) == 1, "exactly one watch per deploy"
    watch = watches[0]
    parent = httpx.get(f"{server.api_url}/task_runs/{watch['parent_task_run_id']}", timeout=10).json()
    assert parent["flow_run_id"] == deploy_run["id"], "the watch shows under its deploy in the UI"
    assert wait_for(server, watch["id"], FINAL, timeout=300) == "COMPLETED"
    watch = run_of(server, watch["id"])
    assert watch["name"] == f"watch production: deploy {deploy_run['id'][:8]}"

    release = Ledger.for_state_dir(box.config("production").state_dir).by_flow_run(deploy_run["id"])
    assert release is not None and release.watch is not None
    assert release.watch["outcome"] == "clean" and release.watch["run_id"] == watch["id"]
    assert release.watch["samples"]["ok"] >= 8, release.watch
    artifacts = httpx.post(f"{server.api_url}/artifacts/filter",
                           json={"artifacts": {"flow_run_id": {"any_": [watch["id"]]}}}, timeout=10).json()
    assert {"watch-production-summary", "watch-production-progress"} <= {a["key"] for a in artifacts}

    dora = deployctl(server, "dora", "production", "--json")
    assert dora.returncode == 0, dora.stderr
    figures = json.loads(dora.stdout)
    assert figures["deployments"] == 1 and figures["change_failure_rate"] == 0.0, figures


def test_the_server_keeps_its_runs_in_postgres(stack: tuple[Stack, Sandbox]) -> None:
    server, _box = stack
    assert server.database_url is not None and server.database_url.startswith("postgresql+asyncpg://"), server.database_url
    engine = create_engine(server.database_url.replace("+asyncpg", "+psycopg"))
    with engine.connect() as conn:
        names = set(conn.execute(text("SELECT f.name FROM flow_run r JOIN flow f ON f.id = r.flow_id")).scalars())
    engine.dispose()
    assert {"production-deployment", "post-deploy-watch"} <= names
