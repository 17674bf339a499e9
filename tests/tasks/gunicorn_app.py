"""gunicorn serving a tiny app on loopback from a workspace whose release a test rewrites: the
masters and workers the app's process tests start, reload and stop for real."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deployments.config import EnvironmentConfig, load_environment_file
from tasks.app_process import start, wait_for_pid_file
from tasks.process_state import is_alive, serving
from tasks.reload import reload
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
