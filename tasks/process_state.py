"""What the kernel says about the app's processes: the master its pid file names, whether a process
lives, a master's workers, when a process started, and whether a worker accepts connections.

Read through psutil, except what it does not expose: the sockets a process holds and what an epoll
instance watches come from /proc/PID/fd and /proc/PID/fdinfo, where a sleeping worker waits from
/proc/PID/wchan, when a process started (to the tick) from /proc/PID/stat.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil

from deployments.config import EnvironmentConfig


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def is_alive(pid: int) -> bool:
    """The process exists and is no zombie (an exited process its parent has not reaped yet)."""
    try:
        # Reap it first if it is our own exited child, or a zombie would look alive.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # a ZombieProcess too
        return False
    except psutil.AccessDenied:
        return True


def running_pid(config: EnvironmentConfig) -> int | None:
    pid = read_pid(config.service.pid_file)
    return pid if pid is not None and is_alive(pid) else None


def leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (a gunicorn master's workers)."""
    try:
        found = [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []
    return [child for child in found if is_alive(child)]


def age(pid: int) -> float:
    """Seconds since `pid` started; 0 for a process that has gone."""
    started = started_at(pid)
    return 0.0 if started is None else time.time() - started


def started_at(pid: int) -> float | None:
    """When `pid` started, in epoch seconds to the clock tick; None for a process that has gone.

    Not psutil's create_time: it adds the start to a boot time rounded down to the second, which can put
    a process up to a second before it started, too coarse to order it against a checkout a moment
    earlier. The kernel counts the start in ticks since boot; the boot clock ties that to the wall clock."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name, which may hold spaces and parentheses itself.
    since_boot = int(stat.rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)


def serving(master: int, workers: int, settle: float = 1.5) -> bool:
    """The master has all its workers and each accepts connections on the master's sockets."""
    pids = children(master)
    if len(pids) < workers or not is_alive(master):
        return False
    listeners = socket_inodes(master)
    return all(accepts(pid, listeners, settle) for pid in pids)


def accepts(worker: int, listeners: set[int], settle: float) -> bool:
    """An event-loop worker (uvicorn, gthread, gevent) accepts once it watches a listening socket
    with epoll; until then it is still importing the app. A worker without epoll (gunicorn's sync
    worker) accepts once it waits in select() or poll(). The kernel names what a process waits in
    only while it sleeps, and some kernels never do: then a sleeping worker that has lived `settle`
    seconds is taken to accept."""
    watched = epoll_watched_inodes(worker)
    if watched is not None:
        return bool(watched & listeners)
    try:
        # psutil does not say where a process waits (its wait channel).
        waits_in = Path(f"/proc/{worker}/wchan").read_text().strip()
        state = psutil.Process(worker).status()
    except (OSError, psutil.Error):
        return False
    if waits_in not in ("", "0"):
        return waits_in.startswith("poll_schedule_timeout")
    return state == psutil.STATUS_SLEEPING and age(worker) >= settle


# psutil does not expose socket inodes or what an epoll instance watches: both are read from /proc.
def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for target in _fd_targets(pid).values():
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def epoll_watched_inodes(pid: int) -> set[int] | None:
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
