"""Nothing waits forever: `wait_until` polls a condition until it holds or its time is up.

It checks first and sleeps between checks, never longer than `interval`, nor (below 50 ms) past the
deadline; the timeout is measured from the call. When the time is up it raises `WaitTimedOut`, which
names what it waited for and for how long, or the caller's own error (`on_timeout`), so a step keeps
the message its operators know.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SHORTEST_SLEEP = 0.05  # the last sleep before the deadline is trimmed to what is left, down to this


class WaitTimedOut(TimeoutError):
    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self.seconds = seconds
        super().__init__(f"timed out after {seconds:g} s waiting for {what}")


def wait_until(condition: Callable[[], T], timeout: float, what: str, *, interval: float = 0.05,
               on_timeout: Callable[[], Exception] | None = None, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """The first truthy value `condition()` returns within `timeout` seconds. `what` completes
    "waiting for ...": "the new master to start"."""
    if interval <= 0:
        raise ValueError(f"interval must be positive, not {interval!r}: a wait that never sleeps spins a core")
    deadline = clock() + timeout
    while True:
        value = condition()
        if value:
            return value
        now = clock()
        if now > deadline:
            raise (on_timeout() if on_timeout is not None else WaitTimedOut(what, timeout))
        sleep(min(interval, max(SHORTEST_SLEEP, deadline - now)))
