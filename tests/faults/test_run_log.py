"""What the run's log in the Prefect UI shows, read back from the Prefect API: FAULTS #20 and #10.

    #20  no notification channel, and the rollback fails (its lock is held)
             the alert is in the run log at ERROR; its advice names the holder, never a restore
         no channel: every message of the plan in the run log, alerts at ERROR, the rest at INFO
         a channel that cannot be loaded or cannot deliver: the message in the run log, and a warning
             naming the block and the cause
         a state hook (no run context) that sends a message: in the log of the run it reports on
         the advice of a failed rollback follows its cause: a backup only once something changed
    #10  a refused ref or environment name, in the deploy and the rollback flow
             one line naming the step, the cause and what to do; no traceback; no lock, no ledger row
    #12  the holder of the deploy lock is named by run name, run id and its page in the UI

The flows run in this process against the test server, on an environment whose files are written
into a scratch directory: no sandbox, no app, nothing deployed.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from deployments.config import EnvironmentConfig, load_environment
from deployments.errors import InvalidInput, LockHeld
from records.ledger import Ledger
from tests.tasks.release_history import environment_file

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
ENV = "logbook"  # an environment of this module alone: its lock and its ledger are nobody else's
WEBHOOK_TOKEN = "hook-token-3c9e1f7a55"


@pytest.fixture(scope="module")
def environments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The committed production file as environment `logbook`, with a git workspace to read the live SHA
    from, and a rollback that waits a second for the lock."""
    directory = tmp_path_factory.mktemp("environments")
    path = environment_file(directory, name=ENV)
    path.write_text(path.read_text().replace("lock_wait_seconds = 150", "lock_wait_seconds = 1"))
    workspace = load_environment(ENV, directory).source.workspace
    workspace.mkdir(parents=True)
    for argv in (["git", "init", "-q"], ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit",
                                         "-q", "--allow-empty", "-m", "live"]):
        subprocess.run(argv, cwd=workspace, check=True, capture_output=True)
    previous = os.environ.get("DEPLOY_ENVIRONMENTS_DIR")
    os.environ["DEPLOY_ENVIRONMENTS_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("DEPLOY_ENVIRONMENTS_DIR", None)
    else:
        os.environ["DEPLOY_ENVIRONMENTS_DIR"] = previous


@pytest.fixture(scope="module")
def config(environments: Path) -> EnvironmentConfig:
    return load_environment(ENV, environments)


def with_blocks(config: EnvironmentConfig, *blocks: str) -> EnvironmentConfig:
    return config.model_copy(update={"notifications": config.notifications.model_copy(update={"blocks": list(blocks)})})


def run_log(state: Any) -> list[tuple[int, str]]:
    """(level, message) of every line the run's log holds on the server, in order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                sort=LogSort.TIMESTAMP_ASC, limit=200)
    return [(log.level, log.message) for log in logs]


def lines_with(log: list[tuple[int, str]], text: str) -> list[tuple[int, str]]:
    return [(level, message) for level, message in log if text in message]


# --- #20 no message is lost --------------------------------------------------------------------------------


def test_without_a_channel_every_message_is_in_the_run_log_and_alerts_are_errors(config: EnvironmentConfig) -> None:
    from prefect import flow

    from records.notifications import notify

    @flow(name="communication-plan")
    def communicate() -> list[bool]:
        return [notify(config, f"Deploy to {ENV} starting", "ref v2; reason: salary insights"),
                notify(config, f"Deploy to {ENV}: approvals done", "in 3.0 s"),
                notify(config, f"ALERT: rollback of {ENV} failed", "check health: HTTP 500\nImpact: ...", alert=True)]

    state = communicate(return_state=True)
    assert state.result() == [True, True, True]
    log = run_log(state)
    assert lines_with(log, f"Deploy to {ENV} starting") == [(logging.INFO, f"Deploy to {ENV} starting\n"
                                                                           "ref v2; reason: salary insights")]
    assert lines_with(log, "approvals done") == [(logging.INFO, f"Deploy to {ENV}: approvals done\nin 3.0 s")]
    assert lines_with(log, "ALERT") == [(logging.ERROR, f"ALERT: rollback of {ENV} failed\n"
                                                        "check health: HTTP 500\nImpact: ...")]


def test_a_failing_channel_falls_back_to_the_run_log_naming_the_block_and_the_cause(
        config: EnvironmentConfig) -> None:
    from prefect import flow
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from records.notifications import notify
    from tests.conftest import free_ports

    (closed,) = free_ports(1)
    CustomWebhookNotificationBlock(name="nobody listens", url=f"http://127.0.0.1:{closed}/hook/{WEBHOOK_TOKEN}",
                                   json_data={"subject": "{{subject}}", "body": "{{body}}"},
                                   ).save("deaf-receiver", overwrite=True)
    channels = with_blocks(config, "custom-webhook/no-such-block", "custom-webhook/deaf-receiver")

    @flow(name="communication-plan")
    def communicate() -> bool:
        return notify(channels, f"CRITICAL: {ENV} after deploy", "error rate 12 %", alert=True)

    state = communicate(return_state=True)
    assert state.result() is False, "no channel took it"
    log = run_log(state)
    assert lines_with(log, "error rate 12 %") == [(logging.ERROR, f"CRITICAL: {ENV} after deploy\nerror rate 12 %")]
    warnings = [message for level, message in log if level == logging.WARNING]
    assert len(warnings) == 2, warnings
    missing, deaf = warnings
    assert "'custom-webhook/no-such-block' failed" in missing and "ValueError" in missing, missing
    assert "'custom-webhook/deaf-receiver' failed" in deaf and "Connect" in deaf, deaf
    assert all("the message follows in this log" in w for w in warnings)
    assert WEBHOOK_TOKEN not in "".join(message for _level, message in log)


def test_a_message_from_a_state_hook_is_in_the_log_of_the_run_it_reports_on(config: EnvironmentConfig) -> None:
    from prefect import Flow, flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.logging.loggers import flow_run_logger
    from prefect.states import State

    from records.notifications import notify

    def on_failure(flow_: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
        notify(config, f"ALERT: {flow_run.name} failed", str(state.message), alert=True,
               run_logger=flow_run_logger(flow_run, flow_))

    @flow(name="communication-plan", on_failure=[on_failure])
    def fails() -> None:
        raise RuntimeError("the canary answered HTTP 500")

    state = fails(return_state=True)
    assert state.is_failed()
    alerts = [(level, message) for level, message in run_log(state) if message.startswith("ALERT: ")]
    assert len(alerts) == 1 and alerts[0][0] == logging.ERROR, alerts
    assert "the canary answered HTTP 500" in alerts[0][1]


def test_a_rollback_refused_its_lock_alerts_at_error_and_names_the_holder(
        config: EnvironmentConfig, environments: Path) -> None:
    """The alert of a failed rollback, with no channel configured: in the run log at ERROR, and its
    advice is to wait for the run named (by name, id and page) or cancel it: nothing to restore."""
    from flows.rollback import rollback
    from tasks.locks import deploy_lock

    ledger = Ledger.for_state_dir(config.state_dir)
    holder_id = "0f18560f-8df4-4c01-a2a8-1b2c3d4e5f60"
    holder = ledger.open_release(environment=ENV, flow_run_id=holder_id, flow_run_name=f"{ENV}: v4", ref="v4")
    try:
        with deploy_lock(ENV, ledger, holder.id):
            state = rollback(environment=ENV, reason="by hand", return_state=True)
    finally:
        ledger.finish(holder.id, "aborted")
    with pytest.raises(LockHeld):
        state.result()
    log = run_log(state)
    alerts = lines_with(log, f"ALERT: rollback of {ENV} failed")
    assert len(alerts) == 1 and alerts[0][0] == logging.ERROR, log
    alert = alerts[0][1]
    assert f"held by run {ENV}: v4 (id {holder_id}, http://127.0.0.1:" in alert
    assert f"/runs/flow-run/{holder_id}; since " in alert
    assert f"- production: {ENV} is at " in alert and "untouched by this rollback" in alert
    assert "- next: " in alert and "wait for that run to end, or cancel it" in alert
    assert f"then run rollback/{ENV} again" in alert
    assert "restore" not in alert.split("- next: ")[1], alert
    record = ledger.by_flow_run(str(state.state_details.flow_run_id))
    assert record is not None and record.outcome == "failed"
    assert record.failed_step == f"acquire deploy lock ({ENV})"
    assert not any("Traceback" in message for _level, message in log), log


def test_the_advice_of_a_failed_rollback_follows_its_cause(config: EnvironmentConfig) -> None:
    from deployments.errors import HealthCheckFailed
    from flows.rollback import failure_advice

    live = "a" * 40
    state, next_step = failure_advice(config, HealthCheckFailed(
        "check health (logbook)", "HTTP 500", "look at the app log"), live)
    assert "maintenance mode is still on" in state and "restore by hand from the backup" in next_step
    refused = InvalidInput("rollback logbook", "no deploy of logbook with run id 'x' in the ledger",
                           "check the run id; `deployctl status` lists the releases")
    state, next_step = failure_advice(config, refused, live)
    assert state == f"{ENV} is at {live[:12]}, untouched by this rollback (no maintenance, no restore)"
    assert next_step == f"check the run id; `deployctl status` lists the releases, then run rollback/{ENV} again"


# --- #10 refused input ---------------------------------------------------------------------------------------


REFUSED = {
    "deploy, a ref that is an option": ("deploy", {"environment": ENV, "ref": "--upload-pack=touch /tmp/x"},
                                        "validate ref: '--upload-pack=touch /tmp/x' is not a valid ref",
                                        "pass a branch, a tag or a commit SHA"),
    "deploy, an environment that is a path": ("deploy", {"environment": "../../etc", "ref": "v2"},
                                              "environment: unknown environment '../../etc'", f"use one of: {ENV}"),
    "rollback, an environment that is a path": ("rollback", {"environment": "../../etc"},
                                                "environment: unknown environment '../../etc'", f"use one of: {ENV}"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_10_refused_input_is_one_line_without_traceback_and_touches_nothing(
        config: EnvironmentConfig, case: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.production_deployment import production_deployment
    from flows.rollback import rollback

    which, parameters, cause, action = REFUSED[case]
    ledger = Ledger.for_state_dir(config.state_dir)
    rows = len(list(ledger.all_releases(ENV)))
    state = (production_deployment if which == "deploy" else rollback)(**parameters, return_state=True)
    assert state.is_failed()
    with pytest.raises(InvalidInput):
        state.result()
    log = run_log(state)
    assert not any("Traceback" in message for _level, message in log), log
    # Prefect's own last line ("Finished in state Failed(...)", at INFO) quotes it once more.
    errors = [message for level, message in log if level >= logging.WARNING]
    assert len(errors) == 1, log
    assert errors[0].startswith(cause) and "\n" not in errors[0] and action in errors[0], errors[0]
    assert len(list(ledger.all_releases(ENV))) == rows, "a ledger row was written"
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(f"deploy-{ENV}")
        except ObjectNotFound:
            return
    assert limit.active_slots == 0, "the refused run holds the lock"


def test_the_holder_of_the_lock_is_named_by_run_name_id_and_page() -> None:
    from datetime import datetime, timezone

    from records.ledger import Release
    from tasks.locks import describe_holder

    run_id = str(UUID("6c1d2a4e-0b7f-4e8e-9d8a-2f3b4c5d6e7f"))
    holder = Release(ref="v4", flow_run_id=run_id, flow_run_name="production: v4", phase="approvals",
                     lock_acquired_at=datetime(2026, 3, 31, 12, 0, 5, tzinfo=timezone.utc))
    url = describe_holder(holder).split(", ")[1].split(";")[0]
    assert describe_holder(holder) == (f"run production: v4 (id {run_id}, {url}; since 2026-03-31 12:00:05 UTC, "
                                       "approvals)")
    assert url.startswith("http://127.0.0.1:") and url.endswith(f"/runs/flow-run/{run_id}")
    by_hand = Release(ref="v4", flow_run_id=None, flow_run_name=None, phase="approvals",
                      lock_acquired_at=holder.lock_acquired_at)
    assert describe_holder(by_hand) == "run v4 (not a Prefect flow run; since 2026-03-31 12:00:05 UTC, approvals)"
