"""The communication plan's delivery (records/notifications.py): what a channel is sent, that no
registered secret is in it, and what happens with no channel or a broken one. The run log is
the fallback: an alert at ERROR, other messages at INFO, and a failing channel never fails the deploy.

Channels are real Prefect notification blocks sending real HTTP to receivers on loopback
(tests/webhook.py's, or one that answers an error). The blocks are handed to `Block.load` from a dict,
as the Prefect server's block store would hand them over: these tests start no Prefect server."""

from __future__ import annotations

import json
import logging
import uuid
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock, MattermostWebhook
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.secrets import MASK, register_secret
from records.notifications import OUTSIDE_A_RUN, impact, notify
from tests.conftest import free_ports
from tests.tasks.release_history import environment_file
from tests.webhook import Receiver, serving


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> EnvironmentConfig:
    return load_environment_file(environment_file(tmp_path_factory.mktemp("environments")))


def with_blocks(config: EnvironmentConfig, *blocks: str) -> EnvironmentConfig:
    return config.model_copy(update={"notifications": config.notifications.model_copy(update={"blocks": list(blocks)})})


@pytest.fixture
def blocks(monkeypatch: pytest.MonkeyPatch) -> dict[str, Block]:
    """The block store: "type-slug/name" -> block. A name it lacks fails as Prefect's own lookup does."""
    store: dict[str, Block] = {}

    def load(cls: type[Block], name: str, *args: Any, **kwargs: Any) -> Block:
        if name not in store:
            raise ValueError(f"Unable to find block document named {name.split('/')[-1]}")
        return store[name]

    monkeypatch.setattr(Block, "load", classmethod(load))
    return store


def webhook(receiver: ThreadingHTTPServer, token: str = "hook-token-0000") -> CustomWebhookNotificationBlock:
    """A custom webhook block: the token is a block secret, templated into the URL as Slack's is."""
    return CustomWebhookNotificationBlock(
        name="deploys", url=f"http://127.0.0.1:{receiver.server_port}/hook/{{{{token}}}}",
        json_data={"subject": "{{subject}}", "body": "{{body}}"}, secrets={"token": token})


class Refusing(ThreadingHTTPServer):
    """A channel on loopback that takes every request and answers `status`, like a revoked webhook."""

    def __init__(self, status: int) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def receiving() -> AbstractContextManager[Receiver]:
    return serving(Receiver(free_ports(1)[0]))


def refusing(status: int = 500) -> AbstractContextManager[Refusing]:
    return serving(Refusing(status))


def logged(caplog: pytest.LogCaptureFixture, name: str = OUTSIDE_A_RUN) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == name]


@pytest.fixture(autouse=True)
def capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=OUTSIDE_A_RUN)


# --- no channel: the run log ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("alert", "level"), [(False, logging.INFO), (True, logging.ERROR)],
                         ids=["a message is logged at INFO", "an alert is logged at ERROR"])
def test_without_a_channel_the_message_goes_to_the_log(config: EnvironmentConfig, caplog: pytest.LogCaptureFixture,
                                                       alert: bool, level: int) -> None:
    assert config.notifications.blocks == []
    assert notify(config, "Deploy to production starting", "ref v2; reason: salary insights", alert=alert) is True
    assert logged(caplog) == [(level, "Deploy to production starting\nref v2; reason: salary insights")]


def test_the_log_of_the_run_is_used_when_given(config: EnvironmentConfig, caplog: pytest.LogCaptureFixture) -> None:
    """A state hook has no run context: it passes its run's logger, and the message goes there only."""
    run_logger = logging.getLogger(f"tests.notifications.run-{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.INFO, logger=run_logger.name)
    notify(config, "ALERT: production: v2 crashed", "the run was killed", alert=True, run_logger=run_logger)
    assert logged(caplog, run_logger.name) == [(logging.ERROR, "ALERT: production: v2 crashed\nthe run was killed")]
    assert logged(caplog) == []


def test_secrets_are_masked_in_the_log(config: EnvironmentConfig, caplog: pytest.LogCaptureFixture) -> None:
    password = f"smtp-{uuid.uuid4().hex[:10]}"
    register_secret(password)
    notify(config, f"Deploy failed with {password}", f"postgresql://app:db-pw-1@db/jobs and {password}", alert=True)
    assert logged(caplog) == [(logging.ERROR, f"Deploy failed with {MASK}\npostgresql://app:{MASK}@db/jobs and {MASK}")]


def test_impact_names_the_step_the_state_and_what_happens_next() -> None:
    assert impact("run-migrations", "partly changed", "the automatic rollback restores the previous release") == (
        "Impact:\n- step: run-migrations\n- production: partly changed\n"
        "- next: the automatic rollback restores the previous release")


# --- channels that deliver --------------------------------------------------------------------------------------


def test_a_channel_is_sent_the_subject_and_the_body_and_nothing_is_logged_twice(
        config: EnvironmentConfig, blocks: dict[str, Block], caplog: pytest.LogCaptureFixture) -> None:
    with receiving() as receiver:
        blocks["custom-webhook/deploys"] = webhook(receiver, token="tok-3f9a2c")
        body = "Release: v2 bbbbbbbbbbbb\n" + impact("check-health", "serving v2", "nothing")
        assert notify(with_blocks(config, "custom-webhook/deploys"), "Deploy to production succeeded", body) is True
    assert receiver.received == [{"subject": "Deploy to production succeeded", "body": body}]
    assert receiver.paths == ["/hook/tok-3f9a2c"]
    assert logged(caplog) == []


def test_every_channel_gets_the_message(config: EnvironmentConfig, blocks: dict[str, Block]) -> None:
    with receiving() as first, receiving() as second:
        blocks["custom-webhook/team"] = webhook(first)
        blocks["custom-webhook/on-call"] = webhook(second)
        assert notify(with_blocks(config, "custom-webhook/team", "custom-webhook/on-call"), "Deploy starting", "v2")
    assert first.subjects() == second.subjects() == ["Deploy starting"]


def test_an_apprise_channel_is_sent_the_message_too(config: EnvironmentConfig, blocks: dict[str, Block]) -> None:
    with receiving() as receiver:
        blocks["mattermost-webhook/team"] = MattermostWebhook(hostname="127.0.0.1", port=receiver.server_port,
                                                              token="mm-token-51c0", secure=False)
        assert notify(with_blocks(config, "mattermost-webhook/team"), "Deploy starting", "ref v2") is True
    assert receiver.paths == ["/hooks/mm-token-51c0"]
    assert receiver.received[0]["text"] == "Deploy starting\r\nref v2"


def test_no_registered_secret_reaches_a_channel(config: EnvironmentConfig, blocks: dict[str, Block]) -> None:
    password = f"db-{uuid.uuid4().hex[:10]}"
    register_secret(password)
    with receiving() as receiver:
        blocks["custom-webhook/deploys"] = webhook(receiver)
        notify(with_blocks(config, "custom-webhook/deploys"), f"ALERT: {password} in the subject",
               f"mysql://root:{password}@db/x failed; postgresql://app:unregistered-pw@db/jobs", alert=True)
    sent = json.dumps(receiver.received)
    assert password not in sent and "unregistered-pw" not in sent
    assert receiver.received == [{"subject": f"ALERT: {MASK} in the subject",
                                  "body": f"mysql://root:{MASK}@db/x failed; postgresql://app:{MASK}@db/jobs"}]


# --- channels that fail ----------------------------------------------------------------------------------------


def test_a_channel_that_cannot_be_loaded_falls_back_to_the_log_and_fails_nothing(
        config: EnvironmentConfig, caplog: pytest.LogCaptureFixture) -> None:
    """The block store itself is down (the Prefect API refuses connections): the deploy goes on."""
    (closed,) = free_ports(1)
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed}/api"}):
        delivered = notify(with_blocks(config, "custom-webhook/deploys"), "ALERT: rollback of production failed",
                           "restore by hand", alert=True)
    assert delivered is False
    (warning, message) = logged(caplog)
    assert warning[0] == logging.WARNING
    assert warning[1].startswith("Notification 'ALERT: rollback of production failed' through block "
                                 "'custom-webhook/deploys' failed (ConnectError: ")
    assert warning[1].endswith("); the message follows in this log. Check the block in the Prefect UI (Blocks).")
    assert message == (logging.ERROR, "ALERT: rollback of production failed\nrestore by hand")


def test_a_block_that_does_not_exist_is_named_with_the_cause(
        config: EnvironmentConfig, blocks: dict[str, Block], caplog: pytest.LogCaptureFixture) -> None:
    assert notify(with_blocks(config, "custom-webhook/gone"), "Deploy starting", "v2") is False
    (warning, message) = logged(caplog)
    assert "through block 'custom-webhook/gone' failed (ValueError: Unable to find block document named gone)" \
        in warning[1]
    assert message == (logging.INFO, "Deploy starting\nv2")


def test_one_broken_channel_among_working_ones_is_logged_and_the_message_counts_as_delivered(
        config: EnvironmentConfig, blocks: dict[str, Block], caplog: pytest.LogCaptureFixture) -> None:
    with receiving() as working, refusing(500) as broken:
        blocks["custom-webhook/team"] = webhook(working)
        blocks["custom-webhook/broken"] = webhook(broken)
        delivered = notify(with_blocks(config, "custom-webhook/broken", "custom-webhook/team"),
                           "CRITICAL: production after deploy", "error rate 12 %", alert=True)
    assert delivered is True
    assert working.subjects() == ["CRITICAL: production after deploy"] and len(broken.paths) == 1
    (warning, message) = logged(caplog)
    assert warning[0] == logging.WARNING and "'custom-webhook/broken' failed (HTTPStatusError: " in warning[1]
    assert message == (logging.ERROR, "CRITICAL: production after deploy\nerror rate 12 %")


def test_the_cause_of_a_failure_is_redacted(config: EnvironmentConfig, blocks: dict[str, Block],
                                            caplog: pytest.LogCaptureFixture) -> None:
    """httpx names the URL it failed on; the log keeps its origin only, so a token in its path never shows."""
    token = f"hook-{uuid.uuid4().hex[:10]}"
    register_secret(token)
    with refusing(404) as broken:
        blocks["custom-webhook/broken"] = webhook(broken, token=token)
        notify(with_blocks(config, "custom-webhook/broken"), "Deploy starting", "v2")
    assert broken.paths == [f"/hook/{token}"]
    text = "\n".join(message for _level, message in logged(caplog))
    assert token not in text and f"for url 'http://127.0.0.1:{broken.server_port}/…'" in text


def test_a_failing_channel_never_writes_its_own_token_to_the_log(
        config: EnvironmentConfig, blocks: dict[str, Block], caplog: pytest.LogCaptureFixture) -> None:
    token = f"hook-{uuid.uuid4().hex[:10]}"
    with refusing(404) as broken:
        blocks["custom-webhook/broken"] = webhook(broken, token=token)
        notify(with_blocks(config, "custom-webhook/broken"), "Deploy starting", "v2")
    assert broken.paths == [f"/hook/{token}"]
    assert token not in "\n".join(message for _level, message in logged(caplog))


def test_an_apprise_channel_that_fails_falls_back_to_the_log(
        config: EnvironmentConfig, blocks: dict[str, Block], caplog: pytest.LogCaptureFixture) -> None:
    with refusing(500) as broken:
        blocks["mattermost-webhook/team"] = MattermostWebhook(hostname="127.0.0.1", port=broken.server_port,
                                                              token="mm-token-51c0", secure=False)
        delivered = notify(with_blocks(config, "mattermost-webhook/team"), "ALERT: rollback of production failed",
                           "restore by hand", alert=True)
    assert broken.paths == ["/hooks/mm-token-51c0"], "the channel was never tried"
    assert delivered is False
    assert (logging.ERROR, "ALERT: rollback of production failed\nrestore by hand") in logged(caplog)

