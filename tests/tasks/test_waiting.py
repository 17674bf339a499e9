"""wait_until: checks first, sleeps a bounded interval between checks, and on timeout names what it
waited for and how long. A fake clock, moved by the sleeps, keeps these exact and instant."""

from __future__ import annotations

import time

import pytest

from deployments.errors import ServiceError
from tasks.waiting import SHORTEST_SLEEP, WaitTimedOut, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_condition_that_holds_returns_its_value_at_once_without_sleeping() -> None:
    clock = Clock()
    calls = []

    def ready() -> int:
        calls.append(clock.now)
        return 4242

    assert wait_until(ready, 10, "the master", clock=clock, sleep=clock.sleep) == 4242
    assert calls == [100.0]
    assert clock.sleeps == []


def test_it_returns_the_first_truthy_value_once_the_condition_holds() -> None:
    clock = Clock()
    answers = iter([None, 0, [], 7])
    assert wait_until(lambda: next(answers), 10, "the pid", clock=clock, sleep=clock.sleep) == 7
    assert len(clock.sleeps) == 3


def test_a_timeout_names_what_was_waited_for_and_how_long() -> None:
    clock = Clock()
    with pytest.raises(WaitTimedOut, match=r"^timed out after 2\.5 s waiting for the new master to start$") as raised:
        wait_until(lambda: False, 2.5, "the new master to start", clock=clock, sleep=clock.sleep)
    assert raised.value.what == "the new master to start" and raised.value.seconds == 2.5
    assert isinstance(raised.value, TimeoutError)
    assert clock.now - 100.0 >= 2.5


def test_the_callers_error_replaces_the_timeout() -> None:
    clock = Clock()
    error = ServiceError("restart application (production)", "timed out after 5 s waiting for x", "read the log")
    with pytest.raises(ServiceError) as raised:
        wait_until(lambda: False, 5, "x", on_timeout=lambda: error, clock=clock, sleep=clock.sleep)
    assert raised.value is error


def test_sleeps_are_bounded_by_the_interval_and_the_last_is_trimmed_to_the_deadline() -> None:
    """Never a sleep longer than `interval`; the last one before the deadline sleeps what is left (not
    below SHORTEST_SLEEP), so the wait gives up within SHORTEST_SLEEP of its deadline."""
    clock = Clock()
    with pytest.raises(WaitTimedOut):
        wait_until(lambda: False, 2.3, "x", interval=1.0, clock=clock, sleep=clock.sleep)
    assert clock.sleeps[:2] == [1.0, 1.0]
    assert max(clock.sleeps) <= 1.0
    assert clock.sleeps[2] == pytest.approx(0.3)
    assert all(s >= SHORTEST_SLEEP for s in clock.sleeps)
    assert clock.now - 100.0 <= 2.3 + SHORTEST_SLEEP + 1e-9


def test_the_condition_is_checked_once_more_after_the_last_sleep() -> None:
    """A condition that comes true during the last sleep is seen, not timed out on."""
    clock = Clock()
    assert wait_until(lambda: clock.now >= 100.29, 0.3, "x", interval=0.2, clock=clock, sleep=clock.sleep)


def test_an_interval_that_would_spin_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        wait_until(lambda: False, 1, "x", interval=0)


def test_on_the_real_clock_it_waits_about_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimedOut, match="waiting for nothing in particular"):
        wait_until(lambda: False, 0.2, "nothing in particular", interval=0.05)
    took = time.monotonic() - started
    assert 0.2 <= took < 2.0
