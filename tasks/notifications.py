"""The communication plan: who hears what, when.

    before starting     "Deploy to production starting": ref, reason, who asked
    during              one message per phase done, with its time
    on completion       the deployment summary: release, database, checks, timings, the watch
    on an issue         at once, with the impact: the step, the state production is in, what happens next
    rollback            started (the plan), done, or failed (what is left to do by hand)
    the watch           critical alerts, a blind watch (no metrics), and its end

Messages go through the Prefect notification blocks named in the environment file
(`notifications.blocks`: Slack, Microsoft Teams, a custom webhook, anything with `notify`); with none
configured, to the run's log. Every message passes through `redact`. A notification that cannot be
delivered is logged and never fails the deploy it reports on.
"""

from __future__ import annotations

import logging

from prefect.blocks.core import Block

from deployments.config import EnvironmentConfig
from deployments.secrets import redact

logger = logging.getLogger("deploy.notifications")


def notify(config: EnvironmentConfig, subject: str, body: str) -> bool:
    """Send to every configured block; True when at least one delivery (or the log) took it."""
    subject, body = redact(subject), redact(body)
    if not config.notifications.blocks:
        logger.info("%s\n%s", subject, body)
        return True
    delivered = False
    for name in config.notifications.blocks:
        try:
            block = Block.load(name)
            block.notify(body=body, subject=subject)  # type: ignore[attr-defined]
            delivered = True
        except Exception as exc:  # noqa: BLE001 - a channel that fails must not fail the deploy
            logger.warning("Notification %r through block %r failed: %s", subject, name,
                           redact(f"{type(exc).__name__}: {exc}"))
    return delivered


def impact(step: str, state: str, next_step: str) -> str:
    """The impact assessment every issue message carries."""
    return f"Impact:\n- step: {step}\n- production: {state}\n- next: {next_step}"
