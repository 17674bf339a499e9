"""The operator's day in the Prefect UI, in a real browser, against a real server, worker and sandbox:
trigger a production deploy from the deployment page, approve it twice in the Resume form, review the
run (name, summary, checks, history, logs), roll it back by hand from the rollback deployment's form,
then reject the next attempt.

Each stage is saved as a numbered screenshot in test-artifacts/ui/ (printed at the end of the run).
Staging is deployed through the API first: production's prerequisites need it on the same release.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployctl.stack import Stack
from deployments.secrets import resolve_app_environment
from tests.e2e.operator import FINAL, run_of, stack_with_sandbox, state_of, trigger, wait_for
from tests.flows.conftest import Sandbox
from tests.ui.browser import VIEWPORT, PrefectUI, chromium, fresh_screenshot_dir, missing_browser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    problem = missing_browser()
    if problem is not None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(f"{problem}; set REQUIRE_BROWSER=1 to fail instead")
    with chromium(tmp_path_factory.mktemp("chromium-home")) as launched:
        yield launched


def switch(old: str, new: str):  # type: ignore[no-untyped-def]
    """An edit of an environment file that fails when the file no longer says `old`."""
    def edit(text: str) -> str:
        assert old in text, f"the environment file no longer has {old!r}"
        return text.replace(old, new)
    return edit


def story_only(box: Sandbox) -> None:
    """The two-hour watch is not this story's; staging's migration rehearsal repeats production's."""
    for env in ("staging", "production"):
        box.edit(env, switch("[watch]\nenabled = true", "[watch]\nenabled = false"))
    box.edit("staging", switch("migration_rehearsal = true", "migration_rehearsal = false"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Sandbox]]:
    yield from stack_with_sandbox(tmp_path_factory, prepare=story_only)


@pytest.fixture
def ui(browser: Any, stack: tuple[Stack, Sandbox], request: pytest.FixtureRequest) -> Iterator[PrefectUI]:
    page = browser.new_page(viewport=VIEWPORT)
    operator = PrefectUI(page, stack[0].ui_url, fresh_screenshot_dir())
    failed_before = request.session.testsfailed
    try:
        yield operator
        if request.session.testsfailed > failed_before:
            operator.shoot("where-it-failed")
    finally:
        page.close()


def deployment_id(stack: Stack, flow: str, name: str) -> str:
    response = httpx.get(f"{stack.api_url}/deployments/name/{flow}/{name}", timeout=10)
    response.raise_for_status()
    return str(response.json()["id"])


def paused_for(stack: Stack, run_id: str, key: str, timeout: float = 300) -> None:
    """Until the run waits on the pause named `key` (each approval is a pause of its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = run_of(stack, run_id)["state"]
        if state["name"] == "Paused" and state["state_details"].get("pause_key") == key:
            return
        assert state["type"] not in FINAL, f"the run ended {state['type']}: {state.get('message')}"
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} never paused for {key}")


def artifact_data(stack: Stack, run_id: str, key: str) -> str:
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [key]}}}
    artifacts = httpx.post(f"{stack.api_url}/artifacts/filter", json=body, timeout=10).json()
    assert artifacts, f"no artifact {key} on run {run_id}"
    return str(artifacts[0]["data"])


def logs_of(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return httpx.post(f"{stack.api_url}/logs/filter", json=body, timeout=10).json()  # type: ignore[no-any-return]


@pytest.mark.timeout(1200)  # about 2.5 minutes on an idle machine; 8.5 on a slow, loaded one
def test_trigger_approve_twice_review_and_roll_back_by_hand(ui: PrefectUI, stack: tuple[Stack, Sandbox]) -> None:
    server, box = stack
    v1, v2 = box.sha("v1")[:12], box.sha("v2")[:12]
    staging_run = trigger(server, "production-deployment/staging", "v2")
    production = deployment_id(server, "production-deployment", "production")
    ui.open(f"/deployments/deployment/{production}")
    ui.page.get_by_text("flows/production_deployment.py:production_deployment").wait_for()
    ui.shoot("deployment-page")
    ui.step_away()
    assert wait_for(server, staging_run, FINAL, timeout=400) == "COMPLETED"

    # Trigger: Run → Custom run with a ref. The run is named after what it deploys.
    form = ui.open_custom_run(production)
    ui.text_field(form, "ref").fill("v2")
    ui.text_field(form, "reason").fill("salary insights")
    ui.shoot("custom-run-form")
    run_id = ui.submit_run(form)
    ui.step_away()
    paused_for(server, run_id, "approval-1")
    ui.open_run(run_id)
    assert ui.title() == f"production: v2 ({v2})"
    assert ui.state() == "Paused"
    ui.shoot("paused-for-approval")

    # Approve: the form says what is approved before any log is read; name and role are required.
    card = ui.open_resume_form()
    facts = ("Deploy v2 to production", f"{v2} Salary insights", f"replacing {v1}", "Reason: salary insights",
             "Waiting for: team-lead and product-owner.", "Approved so far: nobody yet.",
             "1 migration to run, from revision 0001", "0002 Salary range on jobs",
             "1 commit since the live release", "run-security-scan: high 0",
             "test-migrations: upgrade, downgrade, upgrade passed", "staging is healthy at",
             f"serves {v2} (this release)", "Backup first: the production database (sqlite, revision 0001)",
             "pre-deployment-<date>-<time>", "If it fails: rolled back automatically",
             "downgraded to 0001 with this release's own scripts", f"code back to {v1}",
             # migration safety: what 0002 is, what the linter found, what it held on a copy, the worst case
             "(linted by squawk 2.", "0002 Salary range on jobs, and an index on jobs.company.: expand; rollback: "
             "downgrade", "require-concurrent-index-creation warns: CREATE INDEX ix_jobs_company ON jobs (company)",
             "on a copy of production: the database's write lock for ",
             "Worst case, a restore: the database as it is now was copied for the rehearsal in ")
    brief = ui.text_holding(card.locator("article").first, facts)
    for fact in facts:
        assert fact in brief, f"{fact!r} is not in the approval form:\n{brief}"
    for label in ("Approver", "Role", "Decision", "Comment"):
        assert ui.description(card, label), f"the {label} field has no description"
    ui.shoot("approval-form-as-seen", card, whole=False)
    ui.shoot("approval-form-whole-brief", card)
    card.get_by_role("button", name="Submit").click()
    for field in ("approver", "role", "decision"):
        card.get_by_text(f"'{field}' is a required property").wait_for()
    ui.shoot("approval-form-required-fields", card, whole=False)
    assert state_of(server, run_id) == "Paused"
    ui.answer(card, "Dana Whitfield", "team-lead", "approve", "tested on staging")
    ui.submit_resume(card)
    ui.step_away()

    paused_for(server, run_id, "approval-2")
    ui.open_run(run_id)
    card = ui.open_resume_form()
    second = ("Waiting for: product-owner.", "Approved so far: Dana Whitfield (team-lead).")
    brief = ui.text_holding(card.locator("article").first, second)
    assert all(fact in brief for fact in second), brief
    ui.answer(card, "Sam Okafor", "product-owner", "approve", "go")
    ui.shoot("second-approval", card, whole=False)
    ui.submit_resume(card)
    ui.step_away()
    assert wait_for(server, run_id, FINAL, timeout=400) == "COMPLETED"
    served = httpx.get(box.config("production").service.base_url + "/api/health", timeout=5).json()["version"]
    assert served == box.sha("v2")

    # Review: the run page, its summary and its checks, the history per environment, the logs.
    ui.open_run(run_id)
    assert ui.state() == "Completed" and ui.title() == f"production: v2 ({v2})"
    ui.shoot("deploy-completed")
    summary = ui.open_artifact("deploy-production-summary")
    for fact in ("Deploy to production: succeeded", f"v2 {v2} over {v1}", "reason: salary insights",
                 "What changed", "Salary insights: parse salary ranges", "migration 0002",
                 "Dana Whitfield (team-lead) approved", "tested on staging", "Sam Okafor (product-owner) approved",
                 "verify-prerequisites", "post-deployment-verification", "total", "Success criteria",
                 "Every check", "run-critical-path-tests", "pre-deployment-"):
        assert fact in summary, f"{fact!r} is not in the summary:\n{summary}"
    markdown = artifact_data(server, run_id, "deploy-production-summary")
    for criterion in ("Application health checks passing", "Database migrations completed successfully",
                      "Critical functionality verified", "No critical errors in application logs",
                      "Monitoring systems showing normal metrics"):
        assert f"| {criterion} | yes |" in markdown, criterion
    ui.shoot("deploy-summary")
    ui.open_run(run_id)
    checks = ui.open_artifact("deploy-production-checks")
    for step in ("check-merged-to-main", "test-migrations", "backup-database", "run-migrations", "check-health",
                 "run-critical-path-tests", "check-performance"):
        assert step in checks, step
    assert "failed" not in checks
    ui.shoot("deploy-checks")
    ui.open("/artifacts/key/deploy-production-summary")
    ui.page.get_by_text(f"production: v2 ({v2}) succeeded, approved by Dana Whitfield, Sam Okafor").first.wait_for()
    ui.shoot("summary-history")
    ui.open_run(run_id)
    ui.tab("Logs")
    ui.page.locator(".log-row", has_text="Waiting for approval from team-lead and product-owner").first.wait_for()
    ui.shoot("deploy-logs")
    lines = [log["message"] for log in logs_of(server, run_id)]
    assert not [line for line in lines if "Traceback" in line], "a traceback in the deploy's log"
    production_config = box.config("production")
    secret = resolve_app_environment(production_config)[production_config.database.app_variable]
    assert not [line for line in lines if secret in line] and secret not in markdown, "the database URL is shown"

    # Roll back by hand: the rollback deployment's form offers the last good release.
    rollback = deployment_id(server, "rollback", "production")
    form = ui.open_custom_run(rollback)
    assert ui.text_field(form, "to").input_value() == v1
    assert "last good release" in ui.description(form, "to")
    ui.text_field(form, "reason").fill("salary insights confuse users")
    ui.shoot("rollback-form")
    rollback_run = ui.submit_run(form)
    ui.step_away()
    assert wait_for(server, rollback_run, FINAL, timeout=300) == "COMPLETED"
    served = httpx.get(box.config("production").service.base_url + "/api/health", timeout=5).json()["version"]
    assert served == box.sha("v1")
    ui.open_run(rollback_run)
    assert ui.title() == f"rollback production: v2 {v2} → {v1}"
    rolled = ui.open_artifact("rollback-production-summary")
    for fact in ("Rollback of production: rolled back", f"production is back on {v1}",
                 f"Undoes: v2 {v2} over {v1}, deployed by run production: v2 ({v2})",
                 "reason: salary insights confuse users", "downgrade-database", "check-out-previous-release"):
        assert fact in rolled, f"{fact!r} is not in the rollback summary:\n{rolled}"
    ui.shoot("rollback-summary")
    # Nothing good is left before v1 in the ledger: the form no longer offers a target.
    form = ui.open_custom_run(rollback)
    assert ui.text_field(form, "to").input_value() == ""

    # Reject: the deploy ends aborted, and the reason is on the run page, in the summary and in one log line.
    ui.step_away()
    box.edit("production", switch("migration_rehearsal = true", "migration_rehearsal = false"))
    rejected = trigger(server, "production-deployment/production", "v2")
    paused_for(server, rejected, "approval-1")
    ui.open_run(rejected)
    card = ui.open_resume_form()
    ui.answer(card, "Sam Okafor", "product-owner", "reject", "not during the sale")
    ui.shoot("rejection", card, whole=False)
    ui.submit_resume(card)
    ui.step_away()
    assert wait_for(server, rejected, FINAL, timeout=60) == "FAILED"
    reason = "Sam Okafor (product-owner) rejected it: not during the sale. nothing was changed"
    ui.open_run(rejected)
    assert ui.state() == "Failed"
    ui.page.locator(".log-row", has_text=reason).first.wait_for()
    ui.shoot("rejected-run")
    summary = ui.open_artifact("deploy-production-summary")
    assert "Deploy to production: aborted" in summary and reason in summary, summary
    ui.shoot("rejected-summary")
    errors = [log["message"] for log in logs_of(server, rejected) if log["level"] >= 40]
    assert len(errors) == 1 and reason in errors[0], f"one clear line expected, the log has: {errors}"
    served = httpx.get(box.config("production").service.base_url + "/api/health", timeout=5).json()["version"]
    assert served == box.sha("v1")

    ui.open("/runs")
    ui.page.locator(".p-toggle", has_text="Hide subflows").get_by_role("switch").click()
    ui.page.get_by_text("production: prerequisites for v2").first.wait_for(state="detached")
    for name in (f"staging: v2 ({v2})", f"production: v2 ({v2})", f"rollback production: v2 {v2} → {v1}"):
        ui.page.get_by_text(name, exact=True).first.wait_for()
    ui.shoot("runs-as-deploy-history")
    assert all(re.fullmatch(r"\d\d-[a-z-]+\.png", p.name) and p.stat().st_size > 10_000 for p in ui.taken)
