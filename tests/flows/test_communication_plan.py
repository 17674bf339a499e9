"""The communication plan through a real Prefect notification block (a custom webhook) to a local
receiver that records what it gets: before, each phase, completion with the summary, an issue with
its impact, the rollback, the watch's end. No secret in any message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from deployments.errors import ServiceError
from tests.faults.releases import EMAIL_BROKEN, add_fault_releases
from tests.faults.driving import deploy
from tests.flows.conftest import Sandbox, make_sandbox
from tests.webhook import Receiver, receiving

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
TOKEN = "hook-token-5b2e9d0c7a"
SMTP_PASSWORD = "smtp-pass-8f14e45fce"
BLOCK = "custom-webhook/deploy-receiver"


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> Iterator[tuple[Sandbox, Receiver]]:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    os.environ["TEST_SMTP_PASSWORD"] = SMTP_PASSWORD
    with contextmanager(make_sandbox)(tmp_path_factory, "sqlite") as box, receiving() as receiver:
        add_fault_releases(box.root / "origin.git")
        CustomWebhookNotificationBlock(
            name="deploy receiver", url=f"http://127.0.0.1:{receiver.server_port}/hook/{{{{token}}}}",
            json_data={"subject": "{{subject}}", "body": "{{body}}"}, secrets={"token": TOKEN},
        ).save("deploy-receiver", overwrite=True)
        for env in ("staging", "production"):
            box.edit(env, lambda text: text.replace(
                "[approvals]", f'[notifications]\nblocks = ["{BLOCK}"]\n\n[approvals]').replace(
                "[service.env]", '[service.secrets]\nJOBAPP_SMTP_PASSWORD = { env = "TEST_SMTP_PASSWORD" }\n\n'
                                 "[service.env]"))
        assert box.config("production").notifications.blocks == [BLOCK]
        yield box, receiver
    os.environ.pop("TEST_SMTP_PASSWORD", None)


def assert_no_secret(messages: list[dict[str, Any]]) -> None:
    text = json.dumps(messages)
    assert TOKEN not in text and SMTP_PASSWORD not in text


def test_a_successful_deploy_is_announced_phase_by_phase_and_summarised(plan: tuple[Sandbox, Receiver]) -> None:
    box, receiver = plan
    mark = len(receiver.received)
    deploy("staging", EMAIL_BROKEN)
    messages = receiver.since(mark)
    subjects = [m["subject"] for m in messages]
    assert subjects[0] == "Deploy to staging starting", subjects
    for phase in ("verify-prerequisites", "pre-deployment-verification", "deployment-execution",
                  "post-deployment-verification"):
        assert f"Deploy to staging: {phase} done" in subjects, subjects
    assert subjects.index("Deploy to staging: verify-prerequisites done") < subjects.index(
        "Deploy to staging: post-deployment-verification done")
    done = messages[-1]
    assert done["subject"].startswith("Deploy to staging succeeded: ")
    summary = done["body"]
    assert f"Release: {EMAIL_BROKEN} {box.sha(EMAIL_BROKEN)[:12]}" in summary
    assert "Database: 0001 -> m001" in summary and "Backup: pre-deployment-" in summary
    assert "ok  Application health checks passing" in summary and "NOT MET" not in summary
    assert "Watch: not scheduled: no post-deploy-watch/staging deployment" in summary
    assert all(path == f"/hook/{TOKEN}" for path in receiver.paths), "the block's secret reached the URL"
    assert_no_secret(messages)


def test_a_failure_carries_its_impact_and_the_rollback_is_announced(plan: tuple[Sandbox, Receiver]) -> None:
    box, receiver = plan
    mark = len(receiver.received)
    with pytest.raises(ServiceError):
        deploy("production", EMAIL_BROKEN)
    messages = receiver.since(mark)
    subjects = [m["subject"] for m in messages]
    failure = next(m for m in messages if m["subject"] == "Deploy to production failed at check canary (production)")
    assert "email-integration: POST /api/email answered HTTP 500" in failure["body"]
    assert "Impact:\n- step: check canary (production)\n- production: partly changed" in failure["body"]
    assert "- next: the automatic rollback restores the previous release" in failure["body"]
    started = subjects.index("Rollback of production started")
    assert subjects.index("Rollback of production done") > started > subjects.index(failure["subject"])
    rolled = messages[subjects.index("Rollback of production done")]["body"]
    assert f"production is back on {box.sha('v1')[:12]}" in rolled
    assert_no_secret(messages)


def test_an_aborted_deploy_says_nothing_changed(plan: tuple[Sandbox, Receiver]) -> None:
    from deployments.errors import ApprovalRejected
    from tests.flows.conftest import approval

    _box, receiver = plan
    mark = len(receiver.received)
    with pytest.raises(ApprovalRejected):
        deploy("production", EMAIL_BROKEN, approvals=[approval("Dana Whitfield", "team-lead", "reject", "not today")])
    messages = receiver.since(mark)
    aborted = messages[-1]
    assert aborted["subject"] == "Deploy to production aborted at approve deployment"
    assert "Dana Whitfield (team-lead) rejected it: not today" in aborted["body"]
    assert "- production: unchanged" in aborted["body"] and "- next: nothing to undo" in aborted["body"]
    assert not any(m["subject"].startswith("Rollback") for m in messages)


def test_the_end_of_the_watch_is_announced(plan: tuple[Sandbox, Receiver]) -> None:
    from flows.post_deploy_watch import post_deploy_watch

    _box, receiver = plan
    mark = len(receiver.received)
    final = post_deploy_watch("staging", duration_seconds=3, interval_seconds=1, return_state=True)
    assert final.is_completed(), final.message
    messages = receiver.since(mark)
    assert [m["subject"] for m in messages] == ["Watch of staging ended: clean"]
    assert "clean after 3 samples" in messages[0]["body"]


def test_an_unreachable_channel_never_fails_the_work(plan: tuple[Sandbox, Receiver]) -> None:
    from records.notifications import notify

    box, _receiver = plan
    config = box.config("staging").model_copy(update={"notifications": box.config("staging").notifications.model_copy(
        update={"blocks": ["custom-webhook/no-such-block", BLOCK]})})
    assert notify(config, "subject", "body") is True  # the second channel took it
    lonely = config.model_copy(update={"notifications": config.notifications.model_copy(
        update={"blocks": ["custom-webhook/no-such-block"]})})
    assert notify(lonely, "subject", "body") is False
