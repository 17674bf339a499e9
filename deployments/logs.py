"""What the run's log shows: no secret, and one clear line for an expected failure.

Installed once per flow run on the root and Prefect loggers:
- every record is passed through `deployments.secrets.redact`;
- a failure that is a DeployError is reported by its message alone: the message already says the
  step, the cause and the next action, and a traceback would bury it;
- Prefect's lines about running the ledger's step hooks are dropped (two per task, pure noise).
"""

from __future__ import annotations

import logging

from deployments.errors import DeployError
from deployments.secrets import redact

LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs")


class RunLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "hook '_on_running'" in message or "hook '_on_finished'" in message:
            return False
        if record.exc_info and isinstance(record.exc_info[1], DeployError):
            record.exc_info = None
            record.exc_text = None
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER = RunLogFilter()


def install_log_filters() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
