"""reload = "usr2": gunicorn starts a second master on the same sockets. Once each of its workers
accepts connections, the old master is told to stop (its workers finish what they are serving), and
the reload is done when the old master has gone and the pid file names the new one. If the new master
cannot boot, it exits and the old one keeps serving: a broken release never takes the app down."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

from deployments.errors import ServiceError
from tasks.process_state import children, is_alive, read_pid, running_pid, serving
from tasks.reload.strategy import Reload


def hand_over(reload: Reload) -> int:
    config, old = reload.config, reload.old
    before = set(children(old))
    unfinished = read_pid(config.service.pid_file.with_name(config.service.pid_file.name + ".2"))
    if unfinished in before:
        # A handoff a killed deploy left half done: that master serves whatever was checked out then,
        # and while it lives the old master ignores USR2. It goes first, reaped by the old master.
        os.kill(unfinished, signal.SIGTERM)
        reload.wait(lambda: not psutil.pid_exists(unfinished), "the master of an unfinished handoff to stop")
        before.discard(unfinished)
    os.kill(old, signal.SIGUSR2)
    # The old master forks the new one: it is the child that is not one of the old workers.
    reload.wait(lambda: bool(set(children(old)) - before), "the new master to start")
    new = min(set(children(old)) - before)
    # Retiring the old master before the new workers accept would leave nobody accepting: requests
    # wait in the backlog for as long as the new workers take to import the app.
    try:
        reload.wait(lambda: serving(new, reload.workers) or not is_alive(new), "the new master's workers to accept")
    except ServiceError:
        # A master whose workers never accept goes: while it lives, the old master ignores USR2.
        with contextlib.suppress(ProcessLookupError):
            os.kill(new, signal.SIGTERM)
        raise
    if not is_alive(new):
        raise ServiceError(reload.step, "the new release's master exited while booting",
                           f"the old release is still serving; read {config.service.startup_log}")
    os.kill(old, signal.SIGTERM)
    reload.wait(lambda: not is_alive(old), "the old master to finish")
    # gunicorn renames its `.2` pid file once it notices its parent has gone, within a second: until
    # then the pid file names nobody, and a stop or a second reload would find no app.
    reload.wait(lambda: running_pid(config) == new, f"{config.service.pid_file} to name the new master")
    return new
