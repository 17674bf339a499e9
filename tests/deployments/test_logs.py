"""An expected failure is said once, in one clear line, however many levels of Prefect report it."""

from __future__ import annotations

import logging
from typing import Any

from deployments.errors import ApprovalRejected
from deployments.logs import RunLogFilter


def record(message: str, args: tuple[Any, ...] = (), error: BaseException | None = None,
           name: str = "prefect.flow_runs") -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, args, exc_info)


def rejection() -> ApprovalRejected:
    return ApprovalRejected("approve deployment", "Sam Okafor (product-owner) rejected it: not now",
                            "nothing was changed; deploy again once the concern is addressed")


def test_the_flow_says_it_once_and_prefects_repeats_are_dropped() -> None:
    error, said = rejection(), RunLogFilter()
    ours = record("%s", (error,))
    assert said.filter(ours) and ours.getMessage() == str(error)
    for wrapper in ("Encountered exception during execution: %r", "Engine execution exited with unexpected exception"):
        repeat = record(wrapper, (error,) if "%r" in wrapper else (), error)
        assert not said.filter(repeat), wrapper


def test_prefects_first_report_is_rewritten_to_the_message_without_traceback() -> None:
    error, said = rejection(), RunLogFilter()
    first = record(f"Task run failed with exception: {error!r} - Retries are exhausted", error=error,
                   name="prefect.task_runs")
    assert said.filter(first)
    assert first.getMessage() == f"{error} (retries exhausted)" and first.exc_info is None
    # The same record passes the handler's filter too: it must not be dropped there.
    assert said.filter(first)
    assert not said.filter(record("Encountered exception during execution: %r", (error,), error))


def test_another_failure_of_the_same_words_is_still_said() -> None:
    said = RunLogFilter()
    assert said.filter(record("%s", (rejection(),)))
    again = rejection()
    assert said.filter(wrapped := record("Encountered exception during execution: %r", (again,), again))
    assert wrapped.getMessage() == str(again)


def test_a_bug_keeps_its_traceback_and_prefects_words() -> None:
    bug = KeyError("release")
    wrapped = record("Encountered exception during execution: %r", (bug,), bug)
    assert RunLogFilter().filter(wrapped)
    assert wrapped.exc_info is not None and wrapped.getMessage().startswith("Encountered exception during execution")
