"""The communication plan: who hears what, when. Messages go through the Prefect notification blocks
named in the environment file (Slack, Teams, a custom webhook); with none configured, to the run's
log. A notification that cannot be delivered is logged and never fails the deploy it reports on.
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
        except (ValueError, RuntimeError, OSError) as exc:
            logger.warning("Notification through block %r failed: %s", name, redact(str(exc)))
    return delivered
