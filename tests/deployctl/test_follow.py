"""deployctl follow's account of pauses: every pause is said, even one that follows the last within a
poll (an approval answered, the next approver asked for at once)."""

from __future__ import annotations

from types import SimpleNamespace
from uuid import uuid4

from prefect.states import Paused, Running

from deployctl.follow import Follower


def test_a_second_pause_right_after_the_first_is_said_too() -> None:
    said: list[str] = []
    follower = Follower(uuid4(), out=said.append)
    first, second = Paused(), Paused()
    for state in (Running(), first, first, second, Running()):
        follower._pause(SimpleNamespace(state=state))
    events = [line.split(None, 1)[1].split(" (")[0] for line in said]
    assert events == ["paused for approval", "resumed", "paused for approval", "resumed"]
