"""Prefect tasks, one module per resource. Each step of the runbook is one task, named as the runbook
names it, so the UI, the logs, the ledger and the runbook share one vocabulary.

`read_step` tasks observe the world and retry; `change_step` tasks change production and never retry
on their own. Neither caches: every run must look at the world as it is now. While a deploy records
into the ledger (`recording`), every step's start, end and outcome is written there too.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Recording:
    ledger: Any
    release_id: int
    steps: dict[str, int] = field(default_factory=dict)


_recording: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar("deploy_recording", default=None)


@contextmanager
def recording(ledger: Any, release_id: int) -> Iterator[None]:
    token = _recording.set(_Recording(ledger, release_id))
    try:
        yield
    finally:
        _recording.reset(token)


def current_release() -> tuple[Any, int] | None:
    """The ledger and the record this deploy (or rollback) is writing its steps to, if it is."""
    current = _recording.get()
    return None if current is None else (current.ledger, current.release_id)


def _on_running(tsk: Task[..., Any], task_run: TaskRun, state: State) -> None:
    current = _recording.get()
    if current is not None and str(task_run.id) not in current.steps:
        current.steps[str(task_run.id)] = current.ledger.step_started(current.release_id, tsk.name)


def _on_finished(tsk: Task[..., Any], task_run: TaskRun, state: State) -> None:
    current = _recording.get()
    step_id = current.steps.get(str(task_run.id)) if current is not None else None
    if current is None or step_id is None:
        return
    if state.is_completed():
        result = state.result(raise_on_failure=False)
        detail = result.describe() if hasattr(result, "describe") else ("" if result is None else str(result))
        current.ledger.step_finished(step_id, "completed", detail[:2000])
    else:
        current.ledger.step_finished(step_id, "failed", (state.message or "")[:2000])



def read_step(name: str, retries: int = 2, retry_delay_seconds: float = 1.0) -> Callable[[F], F]:
    return task(  # type: ignore[return-value]
        name=name, retries=retries, retry_delay_seconds=retry_delay_seconds, cache_policy=NO_CACHE,
        on_running=[_on_running], on_completion=[_on_finished], on_failure=[_on_finished],
    )


def change_step(name: str) -> Callable[[F], F]:
    return task(  # type: ignore[return-value]
        name=name, retries=0, cache_policy=NO_CACHE,
        on_running=[_on_running], on_completion=[_on_finished], on_failure=[_on_finished],
    )
