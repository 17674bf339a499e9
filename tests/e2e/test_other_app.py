"""Another shape of app than jobapp, end to end under a real Prefect server and worker, the way a team
adopting the tool goes: `deployctl init` on its checkout, the files it wrote filled in, staging and
production brought up at r1 by hand, `deployctl check`, then r2 (a new column, and greetlib 2.0 in an
environment of its own) to staging and to production with two approvals, and a rollback by hand that
takes production back to r1: the column dropped, r1's code, greetlib 1.0 from exactly r1's
environment. The app (tests/other_app) is a FastAPI monorepo on PostgreSQL with five database
variables, no metrics and no version in its health answer. No log or artifact holds the database
password."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployctl.stack import Stack
from deployments.config import EnvironmentConfig
from records.ledger import Ledger, Release
from tests.conftest import free_ports, prefect_server_database
from tests.e2e.operator import FINAL, deployctl, flow_runs, how_it_ended, run_of, trigger, wait_for
from tests.other_app import wheels
from tests.other_app.database import AppDatabases, app_databases
from tests.other_app.environments import (ADMIN_PASSWORD, HEALTH, bring_up, fill_in, fill_in_urls, init, load, stop,
                                          with_critical_paths)
from tests.other_app.repository import REVISIONS, Origin, build_origin, clone
from tests.prefect_servers import drain_prefect_queues

pytestmark = pytest.mark.slow

ENVIRONMENTS = ("staging", "production")
RUNTIME = "/api/v1/utils/runtime/"
ITEMS = "/api/v1/items/"
LOGIN = "/api/v1/login/access-token"


@dataclass
class Story:
    stack: Stack
    root: Path
    directory: Path  # the environment files
    origin: Origin
    databases: AppDatabases
    written: dict[str, str]  # what init wrote, by file name
    r1: dict[str, dict[str, Any]] = field(default_factory=dict)  # environment -> its runtime answer at r1
    runs: dict[str, str] = field(default_factory=dict)  # what -> flow run id

    def config(self, environment: str) -> EnvironmentConfig:
        return load(self.directory, environment)

    def auth(self, environment: str) -> dict[str, str]:
        """The admin's bearer token, from the app's form login."""
        answer = httpx.post(self.config(environment).service.base_url + LOGIN, timeout=10,
                            data={"username": "admin@example.com", "password": ADMIN_PASSWORD})
        answer.raise_for_status()
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def get(self, environment: str, path: str) -> Any:
        headers = self.auth(environment) if path.startswith(ITEMS) else None
        answer = httpx.get(self.config(environment).service.base_url + path, timeout=10, headers=headers)
        answer.raise_for_status()
        return answer.json()

    def live_environment(self, environment: str) -> Path:
        return (self.root / "hosts" / environment / "envs" / "current").resolve()

    def release(self, environment: str, run: str) -> Release:
        release = Ledger.for_state_dir(self.config(environment).state_dir).by_flow_run(self.runs[run])
        assert release is not None, f"no ledger entry for {run}"
        return release

    def steps(self, environment: str, release: Release) -> dict[str, str]:
        ledger = Ledger.for_state_dir(self.config(environment).state_dir)
        return {step.name: step.detail for step in ledger.steps(release.id)}

    def artifact(self, run: str, key: str) -> str:
        query = {"artifacts": {"flow_run_id": {"any_": [self.runs[run]]}, "key": {"any_": [key]}}}
        found = httpx.post(f"{self.stack.api_url}/artifacts/filter", json=query, timeout=10).json()
        assert found, f"no artifact {key} on {run}"
        return str(found[0]["data"])

    def everything(self, what: str) -> list[dict[str, Any]]:
        """Every log, artifact, flow run or task run the server holds."""
        rows: list[dict[str, Any]] = []
        while True:
            page = httpx.post(f"{self.stack.api_url}/{what}/filter", json={"offset": len(rows), "limit": 200},
                              timeout=30).json()
            rows += page
            if len(page) < 200:
                return rows


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str) -> Iterator[Story]:
    root = tmp_path_factory.mktemp("inventory")
    directory = root / "environments"
    *app_ports, server_port = free_ports(3)
    home, server_database = prefect_server_database(tmp_path_factory)
    stack = Stack(home=home, port=server_port, environments_dir=directory, database_url=server_database,
                  tied_to_caller=True)
    with ExitStack() as cleanup, ThreadPoolExecutor(max_workers=1) as pool:
        # The server starts while the app's side is built: nothing reads the environment files before
        # the deployments are registered.
        starting = pool.submit(stack.start_server)

        @cleanup.callback
        def stack_down() -> None:
            wait([starting])
            drain_prefect_queues()
            stack.down(log=lambda *_: None)

        databases = cleanup.enter_context(app_databases(postgres_admin_url, ENVIRONMENTS))
        origin = build_origin(root / "git")
        wheelhouse = wheels.wheelhouse(root / "wheelhouse")
        checkout = root / "dev" / "inventory"  # the team's own checkout, which init reads
        clone(origin.path, checkout, "main")

        written = init(checkout, directory)
        for environment, port in zip(ENVIRONMENTS, app_ports):
            host = root / "hosts" / environment
            text = fill_in(written[f"{environment}.toml"], host, port, wheelhouse)
            if environment == "production":
                text = with_critical_paths(text)
            (directory / f"{environment}.toml").write_text(text)
        urls = {f"{env.upper()}_DATABASE_URL": databases.url(env) for env in ENVIRONMENTS}
        (directory / "app.env").write_text(fill_in_urls(written["app.env"], urls))

        story = Story(stack, root, directory, origin, databases, written)
        operator = {**os.environ, "DEPLOY_ENVIRONMENTS_DIR": str(directory)}
        for environment in ENVIRONMENTS:
            config = story.config(environment)
            cleanup.callback(stop, config)
            bring_up(config, origin.path, "r1", {**databases.variables(environment),
                                                 "FIRST_SUPERUSER_PASSWORD": ADMIN_PASSWORD}, operator)
            story.r1[environment] = story.get(environment, RUNTIME)
        starting.result()
        stack.up(log=lambda *_: None)
        yield story


def test_init_reads_the_monorepo_and_the_operator_fills_in_the_rest(story: Story) -> None:
    written = story.written["production.toml"]
    assert 'app_directory = "backend"' in written
    assert re.search(r'^POSTGRES_SERVER = "host"', written, re.M)
    assert re.search(r'^POSTGRES_DB = "name"', written, re.M)
    assert '"uvicorn_worker.UvicornWorker"' in written and '"app.main:app"]' in written
    assert 'source = "none"' in written and 'start_command = ["{python}", "{bin}/gunicorn", ' in written
    assert re.search(r'^files = \["requirements.txt"\]', written, re.M)
    assert f'repository = "{story.origin.path}"  # GUESS' in written  # the checkout's origin
    assert f'path = "{HEALTH}"  # GUESS' in written  # the route under the prefix its routers are mounted at

    production = story.config("production")
    assert production.source.repository == str(story.origin.path)
    assert production.database.variables == {"POSTGRES_DB": "name", "POSTGRES_PASSWORD": "password",
                                             "POSTGRES_PORT": "port", "POSTGRES_SERVER": "host",
                                             "POSTGRES_USER": "user"}
    assert production.dependencies is not None
    assert production.service.python == production.dependencies.directory / "current" / "bin" / "python"
    assert production.service.start_command[:2] == ["{python}", "{bin}/gunicorn"]
    assert production.health.path == HEALTH and not production.health.check_version
    assert story.databases.password in (story.directory / "app.env").read_text()
    assert story.databases.password not in (story.directory / "production.toml").read_text()

    for environment in ENVIRONMENTS:
        assert story.get(environment, HEALTH) is True
        assert story.r1[environment]["greetlib"] == "1.0"
        assert story.r1[environment]["environment"] == str(story.live_environment(environment))


def test_both_environments_pass_deployctl_check(story: Story) -> None:
    for environment in ENVIRONMENTS:
        result = deployctl(story.stack, "check", environment)
        out = result.stdout + result.stderr
        key = story.live_environment(environment).name
        assert re.search(rf"ok\s+dependencies\s+live environment {key} matches", out), out
        r1 = story.origin.sha("r1")[:12]
        assert f"workspace at {r1} and every app process started after its checkout" in out, out
        assert f"head {REVISIONS['r1']}, nothing pending" in out, out
        assert re.search(r"ok\s+metrics\s+not measured", out), out
        if environment == "production":
            # The login writes nothing (read_only) and the list only reads: check runs both, in order.
            assert re.search(r"ok\s+critical paths\s+2 answered as expected: login, list-items", out), out
        assert result.returncode == 0 and re.search(r"all \d+ checks passed", out), out


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {timeout:g} s"
        time.sleep(0.2)


def approve(story: Story, run_id: str, name: str, role: str) -> None:
    result = deployctl(story.stack, "approve", run_id, "--as", name, "--role", role)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("approved production: r2 (") and f"as {name} ({role})" in result.stdout


def test_r2_goes_to_staging_then_production_with_two_approvals(story: Story) -> None:
    story.runs["staging"] = trigger(story.stack, "production-deployment/staging", "r2")
    assert wait_for(story.stack, story.runs["staging"], FINAL, timeout=600) == "COMPLETED"

    story.runs["production"] = run_id = trigger(story.stack, "production-deployment/production", "r2")
    for name, role in (("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner")):
        assert wait_for(story.stack, run_id, {"Paused"} | FINAL, timeout=600) == "Paused"
        paused = run_of(story.stack, run_id)["state"]["id"]
        approve(story, run_id, name, role)
        wait_until(lambda: run_of(story.stack, run_id)["state"]["id"] != paused, timeout=60)  # resumed
    assert wait_for(story.stack, run_id, FINAL, timeout=600) == "COMPLETED"

    r1, r2 = story.origin.sha("r1"), story.origin.sha("r2")
    for environment in ENVIRONMENTS:
        assert "priority" in story.databases.columns(environment, "items")
        runtime = story.get(environment, RUNTIME)
        r1_environment = Path(story.r1[environment]["environment"])
        assert runtime["greetlib"] == "2.0", runtime
        assert runtime["environment"] == str(story.live_environment(environment)) != str(r1_environment)
        assert Path(runtime["greetlib_file"]).is_relative_to(runtime["environment"])
        # r1's environment is left as it was, for a rollback to return to.
        version = "import greetlib; print(greetlib.__version__)"
        kept = subprocess.run([str(r1_environment / "bin" / "python"), "-c", version], capture_output=True,
                              text=True, timeout=60)
        assert kept.stdout.strip() == "1.0", kept.stderr

        release = story.release(environment, environment)
        before, after = r1_environment.name, Path(runtime["environment"]).name
        assert (release.outcome, release.previous_sha, release.target_sha) == ("succeeded", r1, r2)
        assert (release.db_revision_before, release.db_revision_after) == (REVISIONS["r1"], REVISIONS["r2"])
        assert (release.environment_before, release.environment_after) == (before, after)
        steps = story.steps(environment, release)
        assert steps["install-dependencies"].startswith(f"environment {after} built in"), steps
        assert steps["switch-environment"] == f"environment {after} is live, was {before}"
        # The health answer carries no version: what shows r2 is served is said as just what it is.
        proof = f"workspace at {r2[:12]} and every app process started after its checkout"
        assert proof in steps["check-health"], steps["check-health"]
        summary = story.artifact(environment, f"deploy-{environment}-summary")
        claims = [*steps.values(), summary]
        assert not [c for c in claims if re.search(rf"\bserv(?:ing|es) {r2[:12]}", c)], claims
        assert "| Monitoring systems showing normal metrics | **not measured** |" in summary, summary

    summary = story.artifact("production", "deploy-production-summary")
    assert "Dana Whitfield" in summary and "Sam Okafor" in summary and "**succeeded**" in summary
    assert re.search(r"\| Critical functionality verified \| yes \| login: ok \(POST /api/v1/login/access-token HTTP 200 ",
                     summary), summary
    steps = story.steps("production", story.release("production", "production"))
    assert re.search(r"; create-item: ok \(POST /api/v1/items/ HTTP 201 in \d+ ms\); delete-item: ok \(DELETE "
                     r"/api/v1/items/\d+ HTTP 200", steps["run-critical-path-tests"]), steps["run-critical-path-tests"]
    tests = steps["run-release-tests"]
    assert re.fullmatch(r"3 passed(, \d+ warnings?)? in [\d.]+s \(on a database of their own, migrated to the release's head\)", tests), tests

    created = httpx.post(story.config("production").service.base_url + ITEMS, timeout=10, headers=story.auth("production"),
                         json={"title": "restock shelf 4", "priority": 3})
    assert created.status_code == 201 and created.json()["priority"] == 3
    assert story.get("production", ITEMS)[0]["title"] == "restock shelf 4"

    # Staging has no [[critical_paths]] (init writes none): nothing verified its critical functionality,
    # and its summary must not say otherwise.
    staging = story.artifact("staging", "deploy-staging-summary")
    assert not re.search(r"\| Critical functionality verified \| yes \| *\|", staging), staging
    assert "| Critical functionality verified | **not checked** | not checked: no [[critical_paths]]" in staging


def test_the_watch_checks_health_only_and_ends_clean(story: Story) -> None:
    watch = next(r for r in flow_runs(story.stack, "post-deploy-watch")
                 if r["parameters"].get("deploy_run_id") == story.runs["production"])
    assert wait_for(story.stack, watch["id"], FINAL, timeout=300) == "COMPLETED"
    release = story.release("production", "production")
    assert release.watch is not None and release.watch["outcome"] == "clean", release.watch


def test_a_rollback_by_hand_returns_production_to_r1_and_its_environment(story: Story) -> None:
    out = story.stack.run([sys.executable, "-m", "prefect", "deployment", "run", "rollback/production",
                           "--param", "reason=priority sorting confuses the warehouse"])
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert match, out
    story.runs["rollback"] = match[1]
    assert wait_for(story.stack, story.runs["rollback"], FINAL, timeout=600) == "COMPLETED", \
        how_it_ended(story.stack, story.runs["rollback"])

    assert "priority" not in story.databases.columns("production", "items")  # downgraded
    assert "priority" in story.databases.columns("staging", "items")
    runtime = story.get("production", RUNTIME)
    assert runtime == story.r1["production"], "greetlib 1.0, from exactly the environment r1 ran in"
    assert runtime["greetlib"] == "1.0"
    assert runtime["environment"] == str(story.live_environment("production"))
    items = story.get("production", ITEMS)
    assert items and "priority" not in items[0]  # r1's code
    config = story.config("production")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.source.workspace, capture_output=True,
                          text=True, timeout=30)
    assert head.stdout.strip() == story.origin.sha("r1")

    release = story.release("production", "production")
    assert release.outcome == "rolled_back", release.outcome
    summary = story.artifact("rollback", "rollback-production-summary")
    assert "**rolled back**" in summary, summary
    assert "| switch-back-environment | completed |" in summary, summary


@pytest.mark.parametrize("secret", ["database password", "admin password"])
def test_no_log_or_artifact_holds_a_password(story: Story, secret: str) -> None:
    password = story.databases.password if secret == "database password" else ADMIN_PASSWORD
    leaks = [str(path) for base in (story.root, story.stack.home) for path in base.rglob("*")
             if path.is_file() and not path.is_symlink() and path != story.directory / "app.env"
             and password.encode() in path.read_bytes()]
    logs = story.everything("logs")
    assert len(logs) > 100, "the runs logged next to nothing: the search would prove nothing"
    leaks += [f"log: {entry['message'][:200]}" for entry in logs if password in entry["message"]]
    for what in ("artifacts", "flow_runs", "task_runs"):
        leaks += [f"{what}: {row.get('key') or row.get('name')}" for row in story.everything(what)
                  if password in json.dumps(row)]
    assert not leaks, leaks
