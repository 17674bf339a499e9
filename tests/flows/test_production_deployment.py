"""The deploy flow on a real sandbox and a real Prefect server: the story of one environment pair.

Tests run in order on one sandbox, as a team would use it: bad inputs, a premature production
deploy, an unmerged ref, a dry run, staging, a no-op, approvals refused, timed out, given.
"""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from deployments.errors import ApprovalRejected, InvalidInput, LockHeld, PreflightError
from deployments.secrets import resolve_app_environment
from records.ledger import Ledger
from tests.flows.conftest import Approver, Sandbox, approval

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def deploy(environment: str, ref: str, **kwargs):  # type: ignore[no-untyped-def]
    from flows.production_deployment import production_deployment

    return production_deployment(environment=environment, ref=ref, **kwargs)


def snapshot(box: Sandbox, env: str) -> dict[str, object]:
    """What a failed or refused deploy must leave exactly as it was."""
    config = box.config(env)
    url = resolve_app_environment(config)[config.database.app_variable]
    engine = create_engine(url)
    with engine.connect() as conn:
        schema = {t: sorted(c["name"] for c in inspect(conn).get_columns(t)) for t in inspect(conn).get_table_names()}
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        jobs = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    engine.dispose()
    health = httpx.get(config.service.base_url + "/api/health", timeout=5).json()
    backups = sorted(p.name for p in config.backups.directory.iterdir()) if config.backups.directory.exists() else []
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.source.workspace, capture_output=True,
                          text=True, check=True).stdout.strip()
    return {"sha": head, "served": health["version"], "revision": revision, "schema": schema, "jobs": jobs,
            "backups": backups}


def ledger(box: Sandbox) -> Ledger:
    return Ledger.for_state_dir(box.config("production").state_dir)


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/x", "-f", "..", "v1..v2", "main@{1}"])
def test_bad_ref_is_refused_before_anything_is_touched(box: Sandbox, ref: str) -> None:
    before = snapshot(box, "production")
    fetch_head = box.config("production").source.workspace / ".git" / "FETCH_HEAD"
    with pytest.raises(InvalidInput, match="is not a valid ref"):
        deploy("production", ref)
    assert snapshot(box, "production") == before
    assert not fetch_head.exists(), "git fetch ran for a refused ref"
    assert ledger(box).releases("production", include_dry_runs=True) == []


def test_unknown_environment_is_refused(box: Sandbox) -> None:
    with pytest.raises(InvalidInput, match="unknown environment 'prod'. use one of: production, staging"):
        deploy("prod", "v2")


def test_production_before_staging_is_aborted_untouched(box: Sandbox) -> None:
    before = snapshot(box, "production")
    with pytest.raises(PreflightError) as caught:
        deploy("production", "v2", reason="too early")
    assert "verify staging" in str(caught.value) and f"deploy {box.sha('v2')[:12]} to staging" in str(caught.value)
    assert snapshot(box, "production") == before
    release = ledger(box).releases("production")[0]
    assert release.outcome == "aborted" and release.failed_step == "verify staging"
    assert release.backup_tag is None and not release.code_changed


def test_unmerged_ref_is_aborted(box: Sandbox) -> None:
    before = snapshot(box, "staging")
    with pytest.raises(PreflightError, match="is not on origin/main"):
        deploy("staging", "experiment/llm-scoring")
    assert snapshot(box, "staging") == before
    assert ledger(box).releases("staging")[0].outcome == "aborted"


def test_dry_run_checks_everything_and_changes_nothing(box: Sandbox) -> None:
    before = snapshot(box, "staging")
    message = deploy("staging", "v2", dry_run=True)
    assert message.startswith(f"dry run: would deploy {box.sha('v2')[:12]}") and "Pending: 0002" in message
    assert snapshot(box, "staging") == before
    release = ledger(box).releases("staging", include_dry_runs=True)[0]
    assert release.dry_run and release.outcome == "noop" and release.backup_tag is None
    names = [s.name for s in ledger(box).steps(release.id)]
    assert "test-migrations" in names and "check-staging-health" in names and "backup-database" not in names


def test_staging_deploy_of_v2(box: Sandbox) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    deploy("staging", "v2", reason="salary insights")
    after = snapshot(box, "staging")
    assert after["sha"] == after["served"] == box.sha("v2")
    assert after["revision"] == "0002" and "salary_min" in after["schema"]["jobs"]  # type: ignore[index]
    release = ledger(box).releases("staging")[0]
    assert release.outcome == "succeeded" and release.previous_sha == box.sha("v1")
    assert release.db_revision_before == "0001" and release.db_revision_after == "0002"
    assert release.backup_tag and release.backup_tag.startswith("pre-deployment-")
    manifest = json.loads((box.config("staging").backups.directory / release.backup_tag / "manifest.json").read_text())
    assert manifest["revision"] == "0001" and manifest["row_counts"]["jobs"] > 0
    steps = {s.name: s.status for s in ledger(box).steps(release.id)}
    for name in ("check-merged-to-main", "run-security-scan", "test-migrations", "check-staging-health",
                 "check-migrations", "backup-database", "record-baseline", "verify-environment", "pull-release",
                 "run-migrations", "check-canary", "restart-application", "watch-startup-logs", "check-health",
                 "run-critical-path-tests", "check-performance"):
        assert steps.get(name) == "completed", (name, steps)
    canary = next(s for s in ledger(box).steps(release.id) if s.name == "check-canary")
    assert re.search(r"health and 4 critical paths passed on a canary at http://127\.0\.0\.1:\d+ serving "
                     + box.sha("v2")[:12], canary.detail), canary.detail
    assert set(release.timings) == {"verify-prerequisites", "pre-deployment-verification", "deployment-execution",
                                    "post-deployment-verification"}
    with get_client(sync_client=True) as client:
        summary, checks = (client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                                 sort=ArtifactSort.CREATED_DESC)
                           for key in ("deploy-staging-summary", "deploy-staging-checks"))
    latest = summary[0].data
    assert "Deploy to staging: **succeeded**" in latest and release.backup_tag in latest
    assert "| Database migrations completed successfully | yes |" in latest
    assert checks and "run-critical-path-tests" in str(checks[0].data)


def test_deploying_the_live_sha_again_is_a_noop(box: Sandbox) -> None:
    before = snapshot(box, "staging")
    assert deploy("staging", "v2").endswith("is already live; nothing to do")
    assert snapshot(box, "staging") == before
    assert ledger(box).releases("staging")[0].outcome == "noop"


def test_rejected_approval_aborts_with_nothing_changed(box: Sandbox) -> None:
    before = snapshot(box, "production")
    approver = Approver([approval("Dana Whitfield", "team-lead", "reject", "not during the sale")])
    approver.start()
    with pytest.raises(ApprovalRejected, match="Dana Whitfield \\(team-lead\\) rejected it: not during the sale"):
        deploy("production", "v2")
    approver.join()
    assert snapshot(box, "production") == before
    release = ledger(box).releases("production")[0]
    assert release.outcome == "aborted" and release.backup_tag is None


def test_approval_timeout_aborts(box: Sandbox) -> None:
    box.edit("production", lambda t: t.replace("timeout_seconds = 3600", "timeout_seconds = 10"))
    before = snapshot(box, "production")
    try:
        with pytest.raises(ApprovalRejected, match="no approval from team-lead, product-owner within 10 s"):
            deploy("production", "v2")
    finally:
        box.edit("production", lambda t: t.replace("timeout_seconds = 10", "timeout_seconds = 3600"))
    assert snapshot(box, "production") == before
    assert ledger(box).releases("production")[0].outcome == "aborted"


def test_two_people_approve_then_production_serves_v2(box: Sandbox) -> None:
    approver = Approver([
        approval("Dana Whitfield", "team-lead"),
        approval("Dana Whitfield", "product-owner"),  # one person cannot be both
        approval("Sam Okafor", "product-owner", comment="go"),
    ])
    approver.start()
    deploy("production", "v2", reason="salary insights")
    approver.join()
    after = snapshot(box, "production")
    assert after["sha"] == after["served"] == box.sha("v2") and after["revision"] == "0002"
    release = ledger(box).releases("production")[0]
    assert release.outcome == "succeeded"
    assert [(a["approver"], a["role"]) for a in release.approvals] == [
        ("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner")]


def test_second_deploy_fails_fast_naming_the_holder(box: Sandbox) -> None:
    from tasks.locks import deploy_lock

    book = ledger(box)
    holder = book.open_release(environment="staging", flow_run_id="f" * 36, flow_run_name="staging: v3 (holder)",
                               ref="v3")
    before = snapshot(box, "staging")
    try:
        with deploy_lock("staging", book, holder.id):
            with pytest.raises(LockHeld, match=r"staging is held by run staging: v3 \(holder\) \(id f{36}, "
                                               r"http://127\.0\.0\.1:\d+/runs/flow-run/f{36}; since "):
                deploy("staging", "v3")
    finally:
        book.finish(holder.id, "aborted")
    assert snapshot(box, "staging") == before
