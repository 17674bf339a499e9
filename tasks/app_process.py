"""The app's master process: started detached, found by its pid file, stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Mapping

from deployments.config import EnvironmentConfig
from deployments.errors import ServiceError
from tasks.app_commands import app_command
from tasks.process_state import children, is_alive, leads_group, running_pid
from tasks.processes import Advice, spawn
from tasks.waiting import WaitTimedOut, wait_until

START_ADVICE = Advice(start="check service.start_command and service.python in the environment file",
                      slow="check service.start_command")


def start(config: EnvironmentConfig, app_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start the app detached, its output appended to the startup log. Returns at once."""
    config.service.startup_log.parent.mkdir(parents=True, exist_ok=True)
    config.service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(config.service.startup_log, "ab") as log:
        return spawn(app_command(config, config.service.start_command, app_env),
                     step=f"start application ({config.name})", error=ServiceError, advice=START_ADVICE,
                     stdout=log, stderr=subprocess.STDOUT, new_session=True, die_signal=None)


def wait_for_pid_file(config: EnvironmentConfig, timeout: float, not_pid: int | None = None) -> int:
    """The live master the pid file names (other than `not_pid`), once there is one."""

    def new_master() -> int | None:
        pid = running_pid(config)
        return pid if pid is not None and pid != not_pid else None

    def none_started() -> ServiceError:
        return ServiceError(f"start application ({config.name})",
                            f"no live process in {config.service.pid_file} after {timeout:.0f} s",
                            f"read {config.service.startup_log} for the reason it did not start")

    return wait_until(new_master, timeout, f"a live process in {config.service.pid_file}", on_timeout=none_started)


def stop(config: EnvironmentConfig, timeout: float = 15.0) -> int | None:
    """SIGTERM the master named by the pid file; after `timeout`, SIGKILL it and every worker it
    still has (a master started by a USR2 handoff leads no process group of its own, and workers
    that outlive their master keep the port). Returns the pid stopped."""
    pid = running_pid(config)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not is_alive(pid), timeout, f"master {pid} to stop")
    except WaitTimedOut:
        workers = children(pid)
        if leads_group(pid):
            os.killpg(pid, signal.SIGKILL)
        for target in [pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
    config.service.pid_file.unlink(missing_ok=True)
    return pid
