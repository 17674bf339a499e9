"""What the run's log shows: no secret, and one clear line for an expected failure.

Installed once per flow run on the root and Prefect loggers:
- every record is passed through `deployments.secrets.redact`;
- a failure that is a DeployError is reported by its message alone: the message already says the
  step, the cause and the next action, and a traceback would bury it. Prefect reports a failure
  again at every level it passes (task, subflow, flow, process exit): each DeployError is said once,
  in the words of its message, and Prefect's repeats of it are dropped;
- Prefect's lines about running the ledger's step hooks are dropped (two per task, pure noise).
"""

from __future__ import annotations

import logging
import weakref

from deployments.errors import DeployError
from deployments.secrets import redact

LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
# How Prefect's engines announce an exception that ends a task run, a flow run or the process.
ENGINE_REPORTS = ("Task run failed with exception", "Encountered exception during execution",
                  "Engine execution exited with unexpected exception")
_said: weakref.WeakSet[DeployError] = weakref.WeakSet()


class RunLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "hook '_on_running'" in message or "hook '_on_finished'" in message:
            return False
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, DeployError):
            record.exc_info = None
            record.exc_text = None
            if message.startswith(ENGINE_REPORTS):
                if error in _said:
                    return False
                retried = " (retries exhausted)" if "Retries are exhausted" in message else ""
                record.msg, record.args = f"{error}{retried}", None
                message = record.getMessage()
            _said.add(error)
        if isinstance(record.args, tuple):
            _said.update(arg for arg in record.args if isinstance(arg, DeployError))
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


def run_log(outside: str = "deploy") -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The log of the flow or task run this is called from, which reaches the Prefect API and UI; the
    plain logger `outside` (whose records never reach it) only outside any run: a script, a test."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(outside)
