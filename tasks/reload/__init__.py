"""Making the app serve the code now in the workspace: `reload` returns the pid of the master that
serves it. The environment file's `service.reload` picks the strategy, one module each:

    usr2      a new master beside the old one, which retires once the new workers accept
    hup       new workers under the same master
    command   the environment file's own `reload_command`

With nothing running, whatever the strategy, the app is started and the reload is done when its
workers accept.
"""

from __future__ import annotations

from typing import Mapping

from deployments.config import EnvironmentConfig
from deployments.errors import ServiceError
from tasks.app_process import start, wait_for_pid_file
from tasks.process_state import is_alive, running_pid, serving
from tasks.reload import command, hup, usr2
from tasks.reload.strategy import Reload, Strategy, restart_step, wait

STRATEGIES: dict[str, Strategy] = {"usr2": usr2.hand_over, "hup": hup.reload_in_place, "command": command.run_reload_command}


def reload(config: EnvironmentConfig, app_env: Mapping[str, str], workers: int, timeout: float = 60.0) -> int:
    old = running_pid(config)
    if old is None:
        return _start(config, app_env, workers, timeout)
    return STRATEGIES[config.service.reload](Reload(config, app_env, old, workers, timeout))


def _start(config: EnvironmentConfig, app_env: Mapping[str, str], workers: int, timeout: float) -> int:
    start(config, app_env)
    pid = wait_for_pid_file(config, timeout)
    wait(config, lambda: serving(pid, workers) or not is_alive(pid), timeout, "the workers to accept")
    if not is_alive(pid):
        raise ServiceError(restart_step(config), "the application exited while booting",
                           f"read {config.service.startup_log}")
    return pid
