"""reload = "command": the environment file's `reload_command` reloads the app; done when the pid
file names a live master."""

from __future__ import annotations

from deployments.errors import ServiceError
from tasks.app_commands import app_command
from tasks.app_process import wait_for_pid_file
from tasks.processes import Advice, run
from tasks.reload.strategy import Reload

ADVICE = Advice(start="check service.reload_command", slow="check service.reload_command",
                failed="the running release was not touched; check service.reload_command")


def run_reload_command(reload: Reload) -> int:
    config = reload.config
    run(app_command(config, config.service.reload_command or [], reload.app_env, timeout=reload.timeout),
        step=reload.step, error=ServiceError, advice=ADVICE)
    return wait_for_pid_file(config, reload.timeout)
