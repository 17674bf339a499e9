"""What every reload strategy is given and how it waits: a `Strategy` takes a `Reload` and returns
the pid of the master that serves the new code, or raises ServiceError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from deployments.config import EnvironmentConfig
from deployments.errors import ServiceError
from tasks.waiting import wait_until


@dataclass(frozen=True)
class Reload:
    """One reload of a running app: `old` is the master serving now, `workers` how many workers the
    new code must have, `timeout` how long each wait may take."""

    config: EnvironmentConfig
    app_env: Mapping[str, str]
    old: int
    workers: int
    timeout: float

    @property
    def step(self) -> str:
        return restart_step(self.config)

    def wait(self, condition: Callable[[], object], what: str) -> None:
        wait(self.config, condition, self.timeout, what)


class Strategy(Protocol):
    def __call__(self, reload: Reload) -> int: ...


def restart_step(config: EnvironmentConfig) -> str:
    return f"restart application ({config.name})"


def wait(config: EnvironmentConfig, condition: Callable[[], object], timeout: float, what: str) -> None:
    """Until `condition()` holds; after `timeout`, the restart fails saying what it waited for."""
    wait_until(condition, timeout, what, on_timeout=lambda: ServiceError(
        restart_step(config), f"timed out after {timeout:.0f} s waiting for {what}",
        f"read {config.service.startup_log}; the old release may still be serving"))
