"""Reloads for real, by each strategy of `service.reload`: gunicorn masters and workers on loopback
(tests/tasks/gunicorn_app.py), serving a release a test rewrites between reloads."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import httpx
import pytest

from deployments.config import EnvironmentConfig, ServiceConfig
from deployments.errors import ServiceError
from tasks.process_state import (
    accepts,
    children,
    epoll_watched_inodes,
    is_alive,
    read_pid,
    running_pid,
    serving,
    socket_inodes,
)
from tasks.reload import STRATEGIES, reload
from tests.tasks.gunicorn_app import APP_ENV, BROKEN_APP, WORKERS, App


def test_usr2_reload_hands_over_to_a_new_master_serving_the_new_release(app: App) -> None:
    """The new master's pid comes back, the old master is gone, the pid file names the new one,
    every new worker accepts, and every answer is the release now on disk."""
    old = app.start()
    assert app.answers() == {"v1": 12}
    app.ship("v2")
    new = app.reload()
    assert new != old
    assert not is_alive(old), "the old master still runs"
    assert read_pid(app.config.service.pid_file) == new
    assert len(children(new)) == WORKERS
    assert serving(new, WORKERS), "a new worker does not accept"
    assert app.answers() == {"v2": 12}
    assert app.processes() == {new, *children(new)}


class Load:
    """Users hammering the app, each on its own keep-alive connection, as fast as it answers."""

    def __init__(self, base_url: str, clients: int = 4) -> None:
        self.base_url = base_url
        self.clients = clients
        # (when the request started, its body, or `HTTP <status>` for a 5xx, or the transport error)
        self.outcomes: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _user(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.get("/")
                    outcome = f"HTTP {answer.status_code}" if answer.status_code >= 500 else answer.text
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.outcomes.append((started, outcome))

    def since(self, moment: float) -> Counter[str]:
        with self._lock:
            return Counter(outcome for started, outcome in self.outcomes if started >= moment)


def test_no_request_is_lost_during_a_usr2_reload_under_keep_alive_load(apps: Callable[..., App]) -> None:
    """Clients on keep-alive connections get every answer, none a 5xx, while the release changes under
    them: the old release answers until the new one does, and after the reload only the new one does.
    The app runs jobapp's worker: a plain uvicorn worker resets idle keep-alive connections as it retires."""
    app = apps("keep-alive-safe")
    app.start()
    with Load(app.config.service.base_url) as load:
        app.wait_until(lambda: load.since(0).total() >= 50, "the clients to get going")
        app.ship("v2")
        app.reload()
        reloaded = time.monotonic()
        app.wait_until(lambda: load.since(reloaded).total() >= 50, "answers after the reload")
    seen = load.since(0)
    assert set(seen) == {"v1", "v2"}, f"failed or unexpected answers: {seen}"
    after = load.since(reloaded)
    assert set(after) == {"v2"}, f"answers to requests sent after the reload returned: {after}"


def test_reload_ends_a_handoff_a_killed_deploy_left_half_done(app: App) -> None:
    """A second master left serving by a deploy killed mid-handoff is stopped first; then a fresh
    handoff leaves exactly one master, named by the pid file, serving the release now on disk."""
    old = app.start()
    app.ship("v2")
    os.kill(old, signal.SIGUSR2)
    second = app.config.service.pid_file.with_name(app.config.service.pid_file.name + ".2")
    app.wait_until(lambda: read_pid(second) in children(old), f"{second} to name the old master's child")
    unfinished = read_pid(second)
    assert unfinished is not None
    app.wait_until(lambda: serving(unfinished, WORKERS), "the unfinished handoff's workers to accept")
    app.wait_until(lambda: "v2" in app.answers(), "the unfinished handoff's master to answer")

    app.ship("v3")
    new = app.reload()
    assert new not in (old, unfinished)
    assert not is_alive(unfinished), "the unfinished handoff's master still runs"
    assert not is_alive(old), "the old master still runs"
    workers = children(new)
    assert len(workers) == WORKERS and all(children(worker) == [] for worker in workers)
    assert app.processes() == {new, *workers}, "more than one master is left"
    assert read_pid(app.config.service.pid_file) == new
    assert not second.exists()
    assert app.answers() == {"v3": 12}


def test_a_release_that_cannot_boot_leaves_the_old_one_serving(app: App) -> None:
    """The new master of a release whose app raises on import exits; reload() says so, and the old
    master and its workers keep serving the old release, with nothing else left running."""
    old = app.start()
    workers = set(children(old))
    app.ship("v2", app=BROKEN_APP)
    with pytest.raises(ServiceError, match="exited while booting") as raised:
        app.reload()
    assert str(app.config.service.startup_log) in str(raised.value)
    assert running_pid(app.config) == old
    assert app.answers() == {"v1": 12}
    assert set(children(old)) == workers
    assert app.processes() == {old, *workers}, "a new master or worker was left running"
    assert "this release cannot boot" in app.log()


def names_wait_channels(sleeping: int) -> bool:
    """Whether this kernel says what a sleeping process waits in; some always say 0."""
    return Path(f"/proc/{sleeping}/wchan").read_text().strip() not in ("", "0")


def test_sync_workers_are_seen_to_accept_and_reload(apps: Callable[..., App]) -> None:
    """gunicorn's sync worker has no epoll: it is seen accepting once it waits in select(), and a
    usr2 reload onto sync workers completes."""
    app = apps("sync")
    old = app.start()
    listeners = socket_inodes(old)
    for worker in children(old):
        assert epoll_watched_inodes(worker) is None, "a sync worker should not use epoll"
        if names_wait_channels(old):
            # Recognised by where it waits, not by how long it has lived.
            app.wait_until(lambda: accepts(worker, listeners, settle=float("inf")), f"sync worker {worker} to accept")
    assert app.answers() == {"v1": 12}
    app.ship("v2")
    new = app.reload()
    assert not is_alive(old)
    assert serving(new, WORKERS)
    assert app.answers() == {"v2": 12}


def test_hup_reload_starts_an_app_that_is_not_running_then_reloads_in_place(apps: Callable[..., App]) -> None:
    """With nothing running, reload() starts the app and returns the pid its pid file names; a HUP
    reload keeps that master and replaces its workers with ones serving the new release."""
    app = apps(reload_mode="hup")
    assert running_pid(app.config) is None
    master = app.reload()
    assert master == read_pid(app.config.service.pid_file)
    assert is_alive(master)
    app.wait_until(lambda: serving(master, WORKERS), "the workers to accept")
    assert app.answers() == {"v1": 12}
    before = set(children(master))
    app.ship("v2")
    assert app.reload() == master
    app.wait_until(lambda: not before & set(children(master)), "the old workers to go")
    app.wait_until(lambda: serving(master, WORKERS), "the new workers to accept")
    assert app.answers() == {"v2": 12}


def test_hup_reload_returns_once_the_new_workers_serve(apps: Callable[..., App]) -> None:
    """When a HUP reload returns, the master's workers all accept and answer with the new release."""
    app = apps(reload_mode="hup")
    master = app.reload()
    app.wait_until(lambda: serving(master, WORKERS), "the workers to accept")
    app.ship("v2")
    assert app.reload() == master
    assert serving(master, WORKERS), f"workers {children(master)} do not all accept yet"
    assert app.answers() == {"v2": 12}


def test_hup_reload_of_a_release_that_cannot_boot_says_the_app_went_down(apps: Callable[..., App]) -> None:
    """A HUP onto a release that cannot import takes the app down; reload() says so at once."""
    app = apps(reload_mode="hup")
    master = app.reload()
    app.wait_until(lambda: serving(master, WORKERS), "the workers to accept")
    app.ship("v2", app=BROKEN_APP)
    with pytest.raises(ServiceError) as raised:
        app.reload(timeout=5)
    assert "timed out" not in str(raised.value), f"waited out the timeout: {raised.value}"


def test_usr2_reload_starts_an_app_that_is_not_running(app: App) -> None:
    """No pid file, no app: a usr2 reload starts it and returns the master its pid file names."""
    master = app.reload()
    assert master == read_pid(app.config.service.pid_file)
    app.wait_until(lambda: serving(master, WORKERS), "the workers to accept")
    assert app.answers() == {"v1": 12}


def test_starting_a_release_that_cannot_boot_fails_the_reload(app: App) -> None:
    """With nothing running, reload() of a release whose app raises on import raises ServiceError
    instead of returning the pid of a master that is about to exit."""
    app.ship("v1", app=BROKEN_APP)
    with pytest.raises(ServiceError):
        app.reload(timeout=10)


def test_every_strategy_the_environment_file_accepts_has_its_module() -> None:
    assert set(STRATEGIES) == set(get_args(ServiceConfig.model_fields["reload"].annotation))


def test_command_reload_runs_the_reload_command_and_returns_the_master_its_pid_file_names(app: App) -> None:
    """A failing reload_command fails the restart and leaves the app as it was; one that HUPs the
    master returns that master, which goes on to serve the new release."""
    master = app.start()
    app.ship("v2")

    def reloading_with(argv: list[str]) -> EnvironmentConfig:
        service = app.config.service.model_copy(update={"reload": "command", "reload_command": argv})
        return app.config.model_copy(update={"service": service})

    with pytest.raises(ServiceError, match="the running release was not touched"):
        reload(reloading_with(["{python}", "-c", "raise SystemExit(3)"]), APP_ENV, WORKERS, timeout=30)
    assert running_pid(app.config) == master
    assert app.answers() == {"v1": 12}

    hup = ["{python}", "-c", "import os, signal, sys; os.kill(int(open(sys.argv[1]).read()), signal.SIGHUP)",
           str(app.config.service.pid_file)]
    assert reload(reloading_with(hup), APP_ENV, WORKERS, timeout=30) == master

    def serves_v2() -> bool:
        try:
            return app.answers(4) == {"v2": 4}
        except httpx.HTTPError:
            return False

    app.wait_until(serves_v2, "the master's new workers to serve v2")
