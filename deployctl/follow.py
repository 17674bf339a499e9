"""`deployctl follow RUN_ID`: a run's steps in the terminal as they start and end, until the run ends.

What `prefect deployment run --watch` does for the run's state, done for its steps: every phase (a
subflow) and every step (a task run) of the run, one line when a step starts and one when it ends,
with its outcome and seconds, so a deploy that takes minutes is never minutes of silence. A pause
(waiting for approval) and retries are said too. It reads the Prefect API only (the server named by
PREFECT_API_URL), so it follows a deploy, a rollback or a watch run alike, from any machine.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Prefect names a task run `<task name>-<3 hex>`; the step is the task's name.
_RUN_SUFFIX = re.compile(r"-[0-9a-f]{3}$")


@dataclass
class Follower:
    """Prints what changed in a run's steps since the last look; `poll` once, or `follow` to the end."""

    run_id: UUID
    out: Callable[[str], Any] = print
    phases: dict[UUID, str] = field(default_factory=dict)
    started: set[UUID] = field(default_factory=set)
    ended: set[UUID] = field(default_factory=set)
    retries: dict[UUID, int] = field(default_factory=dict)
    paused: UUID | None = None  # the pause last said, by its state's id: a run can pause again within a poll
    name: str = ""
    flow: str = ""  # the run's own flow: the phase of steps that run in no subflow (a rollback's)

    def follow(self, timeout: float, interval: float = 0.5) -> Any:
        """Follow until the run ends; returns the run. Raises TimeoutError naming the run after `timeout`."""
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while True:
                run = self.poll(client)
                if run.state is not None and run.state.type.value in FINAL:
                    return run
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run.name} ({self.run_id}) is still {run.state.name if run.state else '?'} "
                                       f"after {timeout:.0f} s")
                time.sleep(interval)

    def poll(self, client: Any) -> Any:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterParentFlowRunId,
            TaskRunFilter,
            TaskRunFilterFlowRunId,
            TaskRunFilterSubFlowRuns,
        )
        from prefect.client.schemas.sorting import TaskRunSort

        run = client.read_flow_run(self.run_id)
        if not self.flow:
            self.flow = client.read_flow(run.flow_id).name
        if run.name != self.name:  # a deploy renames its run once it knows what it deploys
            self.name = run.name
            self.out(f"  {_clock()}  run {run.name}")
        self._pause(run)
        for sub in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[self.run_id]))):
            if sub.id not in self.phases:
                self.phases[sub.id] = client.read_flow(sub.flow_id).name  # the phase: verify-prerequisites, ...
        runs = [self.run_id, *self.phases]
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=runs),
                                          subflow_runs=TaskRunFilterSubFlowRuns(exists_=False)),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC)
        for task in sorted(tasks, key=lambda t: t.start_time or t.expected_start_time or datetime.max.astimezone()):
            self._step(task)
        return run

    def _pause(self, run: Any) -> None:
        paused = run.state.id if run.state is not None and run.state.is_paused() else None
        if self.paused is not None and paused != self.paused:
            self.out(f"  {_clock()}  {'':<29} resumed")
        if paused is not None and paused != self.paused:
            self.out(f"  {_clock()}  {'':<29} paused for approval (answer in the UI: Resume, or with "
                     f"`deployctl approve {self.run_id} ...`)")
        self.paused = paused

    def _step(self, task: Any) -> None:
        if task.id in self.ended or task.state is None:
            return
        kind = task.state.type.value
        phase = self.phases.get(task.flow_run_id, self.flow)
        step = _RUN_SUFFIX.sub("", task.name)
        if kind in FINAL:
            self.ended.add(task.id)
            seconds = task.total_run_time.total_seconds() if task.total_run_time else 0.0
            outcome = "ok" if kind == "COMPLETED" else kind.lower()
            self.out(f"  {_clock()}  {phase:<29} {step:<26} {outcome:<9} {seconds:6.1f} s")
            return
        if kind == "RUNNING" and task.id not in self.started:
            self.started.add(task.id)
            self.out(f"  {_clock()}  {phase:<29} {step:<26} started")
        attempt = task.run_count
        if task.state.name in ("AwaitingRetry", "Retrying") and self.retries.get(task.id, 0) < attempt:
            self.retries[task.id] = attempt
            self.out(f"  {_clock()}  {phase:<29} {step:<26} retrying (attempt {attempt} failed)")


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def follow(run_id: UUID, timeout: float = 7200, out: Callable[[str], Any] = print) -> Any:
    return Follower(run_id, out).follow(timeout)
