"""The application process: start, stop, find by pid file.

Commands are argv lists built from the environment file (`{python}` and `{workspace}` are the only
placeholders) and run with a clean environment: the app gets PATH, HOME, locale and its own
variables, never the orchestrator's (which may hold API keys).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

from deployments.config import EnvironmentConfig
from deployments.errors import ServiceError

PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def expand_argv(argv: Sequence[str], config: EnvironmentConfig) -> list[str]:
    values = {"python": str(config.service.python), "workspace": str(config.source.workspace)}
    return [part.format_map(values) if "{" in part else part for part in argv]


def app_process_env(app_env: Mapping[str, str]) -> dict[str, str]:
    base = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    return {**base, **app_env}


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def is_alive(pid: int) -> bool:
    try:
        # Reap it first if it is our own exited child, or a zombie would look alive.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def running_pid(config: EnvironmentConfig) -> int | None:
    pid = read_pid(config.service.pid_file)
    return pid if pid is not None and is_alive(pid) else None


def start(config: EnvironmentConfig, app_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start the app detached, its output appended to the startup log. Returns at once."""
    argv = expand_argv(config.service.start_command, config)
    config.service.startup_log.parent.mkdir(parents=True, exist_ok=True)
    config.service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(config.service.startup_log, "ab") as log:
        try:
            return subprocess.Popen(
                argv,
                cwd=config.source.workspace,
                env=app_process_env(app_env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServiceError(
                f"start application ({config.name})",
                f"cannot run {argv[0]!r}: {exc.strerror}",
                "check service.start_command and service.python in the environment file",
            ) from exc


def wait_for_pid_file(config: EnvironmentConfig, timeout: float, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = running_pid(config)
        if pid is not None and pid != not_pid:
            return pid
        time.sleep(0.05)
    raise ServiceError(
        f"start application ({config.name})",
        f"no live process in {config.service.pid_file} after {timeout:.0f} s",
        f"read {config.service.startup_log} for the reason it did not start",
    )


def stop(config: EnvironmentConfig, timeout: float = 15.0) -> int | None:
    """SIGTERM the master named by the pid file, SIGKILL it after `timeout`. Returns the pid stopped."""
    pid = running_pid(config)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL) if _leads_group(pid) else os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    config.service.pid_file.unlink(missing_ok=True)
    return pid


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
