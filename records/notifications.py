"""The communication plan: who hears what, when.

    before starting     "Deploy to production starting": ref, reason, who asked
    during              one message per phase done, with its time
    on completion       the deployment summary: release, database, checks, timings, the watch
    on an issue         at once, with the impact: the step, the state production is in, what happens next
    rollback            started (the plan), done, or failed (what is left to do by hand)
    the watch           critical alerts, a blind watch (no metrics), and its end

Messages go through the Prefect notification blocks named in the environment file
(`notifications.blocks`: Slack, Microsoft Teams, a custom webhook, anything with `notify`). With
none configured, and whenever a channel fails, the message goes to the run's log, where the Prefect
UI and API show it: an alert (the caller says which messages are) at ERROR, the others at INFO.
Every message passes through `redact`. A notification that cannot be delivered is logged and never
fails the deploy it reports on.
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from typing import Any

from prefect.blocks.core import Block
from pydantic import SecretBytes, SecretStr

from deployments.config import EnvironmentConfig
from deployments.secrets import redact, register_secret
from deployments.logs import run_log

# Outside any flow or task run (a script, a test) there is no run log; this one takes the message then.
OUTSIDE_A_RUN = "deploy.notifications"
_URL_PATH = re.compile(r"(?P<origin>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s'\"]+)/[^\s'\"]*")


def notify(config: EnvironmentConfig, subject: str, body: str, alert: bool = False,
           run_logger: logging.Logger | logging.LoggerAdapter[Any] | None = None) -> bool:
    """Send to every configured block; True when a configured channel took it (or, with none
    configured, the run log did). A message that a channel failed to take is written to the run log
    too, so nobody depends on the channel that broke.

    `alert` marks a message someone must act on (a failure, a failed rollback, a critical watch
    finding): it is logged at ERROR. A state hook, which has no run context, passes the logger of
    its run (`flow_run_logger(flow_run, flow)`) as `run_logger`."""
    subject, body = redact(subject), redact(body)
    log = run_logger or run_log(OUTSIDE_A_RUN)
    delivered, failed = False, False
    for name in config.notifications.blocks:
        try:
            send(name, subject, body)
            delivered = True
        except Exception as exc:  # noqa: BLE001 - a channel that fails must not fail the deploy
            failed = True
            log.warning("Notification %r through block %r failed (%s); the message follows in this log. "
                        "Check the block in the Prefect UI (Blocks).", subject, name,
                        _without_url_paths(redact(f"{type(exc).__name__}: {exc or 'the channel reported it undelivered'}")))
    if failed or not delivered:
        log.log(logging.ERROR if alert else logging.INFO, "%s\n%s", subject, body)
    return delivered or not config.notifications.blocks


def send(block_name: str, subject: str, body: str) -> None:
    """Deliver through one block, or raise. Its own secrets (a webhook URL, a token) are registered for
    redaction first. Apprise-based blocks (Slack, Teams, Mattermost, ...) report a failed delivery only
    under `raise_on_failure()`; otherwise a message lost on the way would count as delivered."""
    block = Block.load(block_name)
    _register_secrets_of(block)
    raising = getattr(block, "raise_on_failure", None)
    with raising() if callable(raising) else nullcontext():
        block.notify(body=body, subject=subject)  # type: ignore[attr-defined]


def _register_secrets_of(block: Block) -> None:
    for value in vars(block).values():
        if isinstance(value, (SecretStr, SecretBytes)):
            secret = value.get_secret_value()
            values = [secret.decode(errors="replace") if isinstance(secret, bytes) else secret]
        elif hasattr(value, "get_secret_value"):  # prefect's SecretDict: a mapping of secret values
            values = [str(v) for v in _leaves(value.get_secret_value())]
        else:
            continue
        for secret_value in values:
            register_secret(secret_value)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _without_url_paths(text: str) -> str:
    """An HTTP error names the URL it failed on; a webhook's path is often its token. Keep the origin."""
    return _URL_PATH.sub(lambda m: f"{m['origin']}/…", text)


def impact(step: str, state: str, next_step: str) -> str:
    """The impact assessment every issue message carries."""
    return f"Impact:\n- step: {step}\n- production: {state}\n- next: {next_step}"
