"""The app's process, reloaded for real: gunicorn masters and workers on loopback, serving a tiny app
from a workspace whose release a test rewrites between reloads."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import ServiceError
from tasks.service import (
    _accepts,
    _epoll_watched_inodes,
    _socket_inodes,
    children,
    is_alive,
    log_offset,
    read_pid,
    reload,
    running_pid,
    serving,
    start,
    stop,
    wait_for_pid_file,
    watch_startup_logs,
)
from tests.conftest import free_ports

PROJECT = Path(__file__).resolve().parents[2]
PYTHON = PROJECT / ".venv" / "bin" / "python"
JOBAPP_GUNICORN_CONF = PROJECT / "sample_app" / "jobapp" / "gunicorn.conf.py"
WORKERS = 2
# No bytecode: a release rewritten within the same second must never be served from a stale .pyc.
APP_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}

# The release is the text of release.txt, read when a worker imports the app: only a reload serves a new one.
APP = '''\
from pathlib import Path

RELEASE = (Path(__file__).resolve().parent / "release.txt").read_text().strip()


def wsgi(environ, start_response):
    body = RELEASE.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = RELEASE.encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''

BROKEN_APP = 'raise RuntimeError("this release cannot boot")\n'

# The worker setting of each kind of app, and the callable it serves.
WORKERS_OF = {
    "uvicorn": ('worker_class = "uvicorn_worker.UvicornWorker"', "app:app"),
    # jobapp's own worker: it tells a keep-alive client before it closes the connection under it.
    "keep-alive-safe": (
        "import importlib.util\n"
        f'_spec = importlib.util.spec_from_file_location("jobapp_gunicorn_conf", "{JOBAPP_GUNICORN_CONF}")\n'
        "_jobapp = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_jobapp)\n"
        "worker_class = _jobapp.KeepAliveSafeWorker",
        "app:app",
    ),
    "sync": ('worker_class = "sync"', "app:wsgi"),
}


def gunicorn_conf(port: int, run: Path, log: Path, worker: str) -> str:
    worker_setting, wsgi_app = WORKERS_OF[worker]
    return "\n".join([
        worker_setting,
        f'wsgi_app = "{wsgi_app}"',
        f'bind = ["127.0.0.1:{port}"]',
        f"workers = {WORKERS}",
        "preload_app = False",
        "keepalive = 2",
        "graceful_timeout = 10",
        f'pidfile = "{run / "gunicorn.pid"}"',
        f'errorlog = "{log}"',
        'loglevel = "info"',
        f'control_socket = "{run / "ctl"}"',
        "",
    ])


def environment(root: Path, port: int, reload_mode: str = "usr2", grace_seconds: float = 1.0) -> EnvironmentConfig:
    """An environment whose app is gunicorn serving `root/workspace/app.py` on `port`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "production.toml").write_text(textwrap.dedent(f"""\
        name = "production"
        state_dir = "state"

        [source]
        repository = "origin.git"
        workspace = "workspace"

        [service]
        base_url = "http://127.0.0.1:{port}"
        python = "{PYTHON}"
        start_command = ["{{bin}}/gunicorn", "-c", "gunicorn.conf.py"]
        reload = "{reload_mode}"
        pid_file = "run/gunicorn.pid"
        startup_log = "logs/app.log"
        grace_seconds = {grace_seconds}
        workers = {WORKERS}

        [database]
        url = {{ env = "SERVICE_TEST_DATABASE_URL" }}

        [backups]
        directory = "backups"
    """))
    return load_environment_file(root / "production.toml")


@dataclass
class App:
    """gunicorn serving the workspace's release; `ship` puts a new release on disk, `answer` asks the app."""

    config: EnvironmentConfig
    http: httpx.Client = field(default_factory=lambda: httpx.Client(
        timeout=10, limits=httpx.Limits(max_keepalive_connections=0)))

    @property
    def workspace(self) -> Path:
        return self.config.source.workspace

    def ship(self, release: str, app: str = APP) -> None:
        (self.workspace / "release.txt").write_text(release + "\n")
        (self.workspace / "app.py").write_text(app)

    def answer(self) -> str:
        return self.http.get(self.config.service.base_url + "/").text

    def answers(self, n: int = 12) -> Counter[str]:
        """What `n` fresh connections are answered, each free to land on any worker."""
        return Counter(self.answer() for _ in range(n))

    def start(self) -> int:
        start(self.config, APP_ENV)
        master = wait_for_pid_file(self.config, 30)
        self.wait_until(lambda: serving(master, WORKERS), "the first master's workers to accept")
        return master

    def reload(self, timeout: float = 60.0) -> int:
        return reload(self.config, APP_ENV, WORKERS, timeout)

    def processes(self) -> set[int]:
        """Every live process running in the workspace: the app's masters and workers."""
        found = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/cwd") == str(self.workspace):
                        found.add(int(entry))
                except OSError:
                    continue
        return {pid for pid in found if is_alive(pid)}

    def log(self) -> str:
        try:
            return self.config.service.startup_log.read_text()
        except FileNotFoundError:
            return "(no startup log)"

    def wait_until(self, condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"{what} within {seconds} s; log:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def kill_everything(self) -> None:
        for _ in range(20):
            left = self.processes()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)


def make_app(tmp_path: Path, worker: str = "uvicorn", reload_mode: str = "usr2") -> App:
    port = free_ports(1)[0]
    config = environment(tmp_path, port, reload_mode)
    config.source.workspace.mkdir(parents=True)
    (config.source.workspace / "gunicorn.conf.py").write_text(
        gunicorn_conf(port, config.service.pid_file.parent, config.service.startup_log, worker))
    app = App(config)
    app.ship("v1")
    return app


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Makes an app (not yet started); every process it ever ran is gone after the test."""
    made: list[App] = []

    def make(worker: str = "uvicorn", reload_mode: str = "usr2") -> App:
        app = make_app(tmp_path / f"app{len(made)}", worker, reload_mode)
        made.append(app)
        return app

    yield make
    for app in made:
        try:
            stop(app.config, timeout=5)
        finally:
            app.kill_everything()
            app.http.close()
    left = {str(app.workspace): app.processes() for app in made}
    assert not any(left.values()), f"processes left running: {left}"


@pytest.fixture
def app(apps: Callable[..., App]) -> App:
    return apps()


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
    listeners = _socket_inodes(old)
    for worker in children(old):
        assert _epoll_watched_inodes(worker) is None, "a sync worker should not use epoll"
        if names_wait_channels(old):
            # Recognised by where it waits, not by how long it has lived.
            app.wait_until(lambda: _accepts(worker, listeners, settle=float("inf")), f"sync worker {worker} to accept")
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


def test_the_startup_grace_counts_from_the_first_answer(app: App) -> None:
    """An app that answers only some time after the restart (a slow boot) is watched for the whole
    grace time after its first answer, not for what is left of it after the boot."""
    import http.server
    import threading

    port = int(app.config.service.base_url.rsplit(":", 1)[1].split("/")[0])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    boot = threading.Timer(1.5, server.serve_forever)
    offset = log_offset(app.config)
    began = time.monotonic()
    boot.start()
    try:
        summary = watch_startup_logs.fn(app.config, offset)
        took = time.monotonic() - began
    finally:
        server.shutdown()
        server.server_close()
    grace = app.config.service.grace_seconds
    assert took >= 1.5 + grace, f"the watch ended {took:.1f} s after the restart; the app answered after 1.5 s"
    assert summary.endswith("after the new workers first answered"), summary


def test_watch_startup_logs_fails_on_an_error_line_after_the_offset(app: App) -> None:
    """An error pattern written after the offset fails the watch; one written before it does not,
    and a quiet log passes once the grace time has run."""
    app.start()
    log = app.config.service.startup_log
    with log.open("a") as handle:
        handle.write("[CRITICAL] WORKER TIMEOUT (pid:1), before this restart\n")
    offset = log_offset(app.config)
    app.ship("v2")
    app.reload()
    assert "no error pattern" in watch_startup_logs.fn(app.config, offset)
    with log.open("a") as handle:
        handle.write("[ERROR] Reason: Worker failed to boot.\n")
    with pytest.raises(ServiceError, match="1 error line.*Worker failed to boot"):
        watch_startup_logs.fn(app.config, offset)


def test_a_traceback_fails_the_watch_under_the_default_error_patterns(app: App) -> None:
    """A Python traceback after the restart fails the watch with the default error patterns."""
    log = app.config.service.startup_log
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\n  File \"app.py\", line 1\nRuntimeError: boom\n")
    with pytest.raises(ServiceError, match="error line"):
        watch_startup_logs.fn(app.config, 0)


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
