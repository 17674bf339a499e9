"""The app's master started, found by its pid file and stopped, on a real gunicorn app
(tests/tasks/gunicorn_app.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from deployments.errors import ServiceError
from tasks.app_process import stop, wait_for_pid_file
from tasks.process_state import children, is_alive, running_pid
from tests.tasks.gunicorn_app import App


def test_stop_ends_the_master_and_its_workers(app: App) -> None:
    """stop() after a usr2 reload (the master is no child of this process) ends the master and every
    worker and removes the pid file; stopping again finds nothing."""
    app.start()
    app.ship("v2")
    master = app.reload()
    workers = children(master)
    assert stop(app.config) == master
    assert not is_alive(master)
    assert [worker for worker in workers if is_alive(worker)] == []
    assert not app.config.service.pid_file.exists()
    assert running_pid(app.config) is None
    assert app.processes() == set()
    assert stop(app.config) is None


@pytest.mark.parametrize("handoffs", [
    0,
    pytest.param(1),
])
def test_stop_kills_the_workers_of_a_master_that_does_not_stop_in_time(app: App, handoffs: int) -> None:
    """A master that ignores SIGTERM for `timeout` is killed with its workers, whether it is the
    first master or one a usr2 handoff started."""
    master = app.start()
    for n in range(handoffs):
        app.ship(f"v{n + 2}")
        master = app.reload()
    workers = children(master)
    os.kill(master, signal.SIGSTOP)
    assert stop(app.config, timeout=0.5) == master
    deadline = time.monotonic() + 3
    while any(is_alive(pid) for pid in [master, *workers]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(master)
    assert [worker for worker in workers if is_alive(worker)] == [], "workers of the killed master still run"


def test_waiting_for_a_pid_file_nobody_writes_says_where_to_look(app: App) -> None:
    with pytest.raises(ServiceError, match=r"no live process in .*gunicorn\.pid after 0 s") as raised:
        wait_for_pid_file(app.config, timeout=0.2)
    assert f"read {app.config.service.startup_log}" in str(raised.value)
