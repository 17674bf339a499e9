"""The application process: start, stop, find by pid file.

Commands are argv lists built from the environment file (`{python}`, `{bin}` (its directory) and
`{workspace}` are the only placeholders) and run with a clean environment: the app gets PATH, HOME, locale and its own
variables, never the orchestrator's (which may hold API keys).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

from deployments.config import EnvironmentConfig
from deployments.errors import ServiceError
from deployments.secrets import redact, resolve_app_environment
from deployments.logs import run_log
from tasks.steps import change_step, read_step
from tasks.processes import Advice, Command, child_env, run, spawn

START_ADVICE = Advice(start="check service.start_command and service.python in the environment file",
                      slow="check service.start_command")

def expand_argv(argv: Sequence[str], config: EnvironmentConfig, workspace: Path | None = None) -> list[str]:
    """`argv` with the placeholders filled in; `workspace` stands in for a scratch tree of the release."""
    values = {"python": str(config.service.python), "bin": str(config.service.python.parent),
              "workspace": str(workspace or config.source.workspace)}
    return [part.format_map(values) if "{" in part else part for part in argv]


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
        return spawn(Command.of(argv, cwd=config.source.workspace, env=child_env(app_env)),
                         step=f"start application ({config.name})", error=ServiceError, advice=START_ADVICE,
                         stdout=log, stderr=subprocess.STDOUT, new_session=True, die_signal=None)


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
    """SIGTERM the master named by the pid file; after `timeout`, SIGKILL it and every worker it
    still has (a master started by a USR2 handoff leads no process group of its own, and workers
    that outlive their master keep the port). Returns the pid stopped."""
    pid = running_pid(config)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() > deadline:
            workers = children(pid)
            if _leads_group(pid):
                os.killpg(pid, signal.SIGKILL)
            for target in [pid, *workers]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
            break
        time.sleep(0.05)
    config.service.pid_file.unlink(missing_ok=True)
    return pid


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (a gunicorn master's workers)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    found: list[int] = []
    for tid in threads:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return [child for child in found if is_alive(child)]


def reload(config: EnvironmentConfig, app_env: Mapping[str, str], workers: int, timeout: float = 60.0) -> int:
    """Make the app serve the code now in the workspace; returns the pid of the master that serves it.

    usr2: gunicorn starts a second master on the same sockets. Once each of its workers accepts
    connections, the old master is told to stop (its workers finish what they are serving), and the
    reload is done when the old master has gone and the pid file names the new one. If the new master
    cannot boot, it exits and the old one keeps serving: a broken release never takes the app down.
    hup: reload in place (new workers, same master), done when the new workers accept and the old ones
    have drained; a release that cannot import takes the app down (and says so), which is why
    `preflight_command` and the canary run first. With nothing running, the app is started and the
    reload is done when its workers accept.
    """
    old = running_pid(config)
    step = f"restart application ({config.name})"
    if old is None:
        start(config, app_env)
        pid = wait_for_pid_file(config, timeout)
        _wait(lambda: serving(pid, workers) or not is_alive(pid), timeout, config, "the workers to accept")
        if not is_alive(pid):
            raise ServiceError(step, "the application exited while booting", f"read {config.service.startup_log}")
        return pid
    if config.service.reload == "command":
        argv = expand_argv(config.service.reload_command or [], config)
        run(Command.of(argv, cwd=config.source.workspace, env=child_env(app_env), timeout=timeout), step=step,
            error=ServiceError, advice=Advice(start="check service.reload_command", slow="check service.reload_command",
                                              failed="the running release was not touched; check service.reload_command"))
        return wait_for_pid_file(config, timeout)
    if config.service.reload == "hup":
        before = set(children(old))
        os.kill(old, signal.SIGHUP)
        listeners = _socket_inodes(old)

        def replaced() -> bool:
            # Done when the new workers accept and the old ones, which drain what they serve, are gone.
            current = set(children(old))
            fresh = current - before
            return not current & before and len(fresh) >= workers and all(
                _accepts(pid, listeners, 1.5) for pid in fresh)

        _wait(lambda: replaced() or not is_alive(old), timeout, config, "new workers after HUP")
        if not is_alive(old):
            raise ServiceError(step, "the application exited while its workers reloaded the new release "
                               "(reload = \"hup\" has no old master to fall back on)",
                               f"read {config.service.startup_log}; start the previous release by hand or roll back")
        return old
    before = set(children(old))
    unfinished = read_pid(config.service.pid_file.with_name(config.service.pid_file.name + ".2"))
    if unfinished in before:
        # A handoff a killed deploy left half done: that master serves whatever was checked out then,
        # and while it lives the old master ignores USR2. It goes first, reaped by the old master.
        os.kill(unfinished, signal.SIGTERM)
        _wait(lambda: not Path(f"/proc/{unfinished}").exists(), timeout, config,
              "the master of an unfinished handoff to stop")
        before.discard(unfinished)
    os.kill(old, signal.SIGUSR2)
    # The old master forks the new one: it is the child that is not one of the old workers.
    _wait(lambda: bool(set(children(old)) - before), timeout, config, "the new master to start")
    new = min(set(children(old)) - before)
    # Retiring the old master before the new workers accept would leave nobody accepting: requests
    # wait in the backlog for as long as the new workers take to import the app.
    try:
        _wait(lambda: serving(new, workers) or not is_alive(new), timeout, config,
              "the new master's workers to accept")
    except ServiceError:
        # A master whose workers never accept goes: while it lives, the old master ignores USR2.
        with contextlib.suppress(ProcessLookupError):
            os.kill(new, signal.SIGTERM)
        raise
    if not is_alive(new):
        raise ServiceError(step, "the new release's master exited while booting",
                           f"the old release is still serving; read {config.service.startup_log}")
    os.kill(old, signal.SIGTERM)
    _wait(lambda: not is_alive(old), timeout, config, "the old master to finish")
    # gunicorn renames its `.2` pid file once it notices its parent has gone, within a second: until
    # then the pid file names nobody, and a stop or a second reload would find no app.
    _wait(lambda: running_pid(config) == new, timeout, config, f"{config.service.pid_file} to name the new master")
    return new


def serving(master: int, workers: int, settle: float = 1.5) -> bool:
    """The master has all its workers and each accepts connections on the master's sockets."""
    pids = children(master)
    if len(pids) < workers or not is_alive(master):
        return False
    listeners = _socket_inodes(master)
    return all(_accepts(pid, listeners, settle) for pid in pids)


def _accepts(worker: int, listeners: set[int], settle: float) -> bool:
    """An event-loop worker (uvicorn, gthread, gevent) accepts once it watches a listening socket
    with epoll; until then it is still importing the app. A worker without epoll (gunicorn's sync
    worker) accepts once it waits in select() or poll(). The kernel names what a process waits in
    only while it sleeps, and some kernels never do: then a sleeping worker that has lived `settle`
    seconds is taken to accept."""
    watched = _epoll_watched_inodes(worker)
    if watched is not None:
        return bool(watched & listeners)
    try:
        waits_in = Path(f"/proc/{worker}/wchan").read_text().strip()
        state = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if waits_in not in ("", "0"):
        return waits_in.startswith("poll_schedule_timeout")
    return state == "S" and _age(worker) >= settle


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for target in _fd_targets(pid).values():
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _epoll_watched_inodes(pid: int) -> set[int] | None:
    """Inodes of the files `pid` watches with epoll, from /proc/PID/fdinfo; None if it has no epoll instance."""
    instances = [fd for fd, target in _fd_targets(pid).items() if target == "anon_inode:[eventpoll]"]
    if not instances:
        return None
    watched = set()
    for fd in instances:
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        watched |= {int(inode, 16) for inode in re.findall(r"^tfd:.*\bino:([0-9a-f]+)", info, flags=re.M)}
    return watched


def _fd_targets(pid: int) -> dict[str, str]:
    targets = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for fd in fds:
        try:
            targets[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return targets


def _age(pid: int) -> float:
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _wait(condition, timeout: float, config: EnvironmentConfig, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ServiceError(f"restart application ({config.name})", f"timed out after {timeout:.0f} s waiting for {what}",
                               f"read {config.service.startup_log}; the old release may still be serving")
        time.sleep(0.05)


def log_offset(config: EnvironmentConfig) -> int:
    try:
        return config.service.startup_log.stat().st_size
    except FileNotFoundError:
        return 0


def scan_startup_log(config: EnvironmentConfig, offset: int) -> list[str]:
    """Lines written to the startup log since `offset` that match one of the configured error patterns."""
    return scan_log(config.service.startup_log, config.service.error_patterns, offset)


def scan_log(path: Path, error_patterns: Sequence[str], offset: int = 0) -> list[str]:
    """Lines of `path` after byte `offset` that match one of `error_patterns`; none if it does not exist."""
    patterns = [re.compile(p) for p in error_patterns]
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if any(p.search(line) for p in patterns)]


@read_step("verify-environment", retries=0)
def verify_environment(config: EnvironmentConfig) -> str:
    """Runbook step 6: every variable the app needs is configured and every secret resolves."""
    app_env = resolve_app_environment(config)
    secret_names = sorted([*config.service.secrets, config.database.app_variable])
    return (f"{len(app_env)} variables configured; secrets resolved from their sources: "
            f"{', '.join(secret_names)} (values not shown)")


@change_step("restart-application")
def restart_application(config: EnvironmentConfig) -> str:
    """Restart the app on the checked-out code; a release that cannot import is never reloaded."""
    app_env = resolve_app_environment(config)
    step = f"restart application ({config.name})"
    if config.service.preflight_command:
        argv = expand_argv(config.service.preflight_command, config)
        result = run(Command.of(argv, cwd=config.source.workspace, env=child_env(app_env), timeout=120), step=step,
                     error=ServiceError, advice=Advice(start="check service.preflight_command",
                                                       slow="the running release was not touched; fix the release"))
        if not result.ok:
            raise ServiceError(step, f"the release fails its preflight ({result.error_line()})",
                               "the running release was not touched; fix the release")
    pid = reload(config, app_env, config.service.workers)
    return f"serving from master pid {pid} ({config.service.reload})"


@read_step("watch-startup-logs", retries=0)
def watch_startup_logs(config: EnvironmentConfig, offset: int) -> str:
    """Warning of step 4: no error pattern in the log for the grace time after the restart. The grace
    counts from the moment the new workers answer HTTP (any status): an app that takes 10 s to boot
    is watched for its first `grace_seconds` of serving, not for the time it spent importing.
    Everything logged since the restart began is read too."""
    step = f"watch startup logs ({config.name})"
    answered = _first_answer(config, offset, step)
    deadline = answered + config.service.grace_seconds
    while True:
        _raise_on_errors(config, offset, step)
        if time.monotonic() >= deadline:
            return (f"no error pattern in {config.service.startup_log} for {config.service.grace_seconds:g} s "
                    "after the new workers first answered")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _first_answer(config: EnvironmentConfig, offset: int, step: str) -> float:
    """When the app first answers its liveness URL, watching the log meanwhile; bounded by the health
    deadline (the health check that follows says why an app that never answers is down)."""
    from tasks.health import probe

    url = config.service.base_url + config.health.path
    deadline = time.monotonic() + config.health.deadline_seconds
    said = False
    while True:
        _raise_on_errors(config, offset, step)
        answer = probe(url, min(config.health.timeout_seconds, 2.0))
        if answer.status_code is not None or time.monotonic() >= deadline:
            return time.monotonic()
        if not said:
            run_log().info("%s: waiting for the new workers to answer %s (up to %g s)", step, url,
                           config.health.deadline_seconds)
            said = True
        time.sleep(0.2)


def _raise_on_errors(config: EnvironmentConfig, offset: int, step: str) -> None:
    matches = scan_startup_log(config, offset)
    if matches:
        raise ServiceError(step, f"{len(matches)} error line(s) after the restart, first: {redact(matches[0])[:300]}",
                           f"read {config.service.startup_log}")


def started_before(config: EnvironmentConfig, moment: float) -> bool:
    """Every process of the running app (its master and each worker) started before `moment` (epoch
    seconds): they all imported the code that was on disk then. False when no app runs."""
    master = running_pid(config)
    if master is None:
        return False
    now = time.time()
    return all(now - _age(pid) < moment for pid in [master, *children(master)])


def _run_app_command(config: EnvironmentConfig, argv: list[str], step: str) -> None:
    app_env = resolve_app_environment(config)
    command = Command.of(expand_argv(argv, config), cwd=config.source.workspace, env=child_env(app_env), timeout=60)
    run(command, step=step, error=ServiceError, advice=Advice(start="check the command in [service]",
                                                              slow="check the command in [service]",
                                                              failed="check the command in [service]"))


@change_step("stop-traffic")
def stop_traffic(config: EnvironmentConfig) -> str:
    """Rollback, immediate action: stop traffic to the new deployment (maintenance mode)."""
    if not config.service.maintenance_on_command:
        return "no maintenance_on_command configured: traffic keeps flowing during the rollback"
    _run_app_command(config, config.service.maintenance_on_command, f"stop traffic ({config.name})")
    return "maintenance mode on: the app answers 503 with Retry-After"


@change_step("resume-traffic")
def resume_traffic(config: EnvironmentConfig) -> str:
    if not config.service.maintenance_off_command:
        return "no maintenance_off_command configured"
    _run_app_command(config, config.service.maintenance_off_command, f"resume traffic ({config.name})")
    return "maintenance mode off: traffic resumed"
