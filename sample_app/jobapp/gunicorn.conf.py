"""gunicorn settings for jobapp: ``python -m gunicorn -c gunicorn.conf.py jobapp.app:app``.

Environment: JOBAPP_BIND (127.0.0.1:8000), JOBAPP_WORKERS (2), JOBAPP_PID_FILE,
JOBAPP_LOG_FILE (access and error log; stdout and stderr when unset), JOBAPP_CONTROL_SOCKET
(default $JOBAPP_DATA_DIR/gunicorn.ctl), JOBAPP_DATA_DIR (./var).
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn_worker import UvicornWorker

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONNECTION_CLOSE = (b"connection", b"close")


class KeepAliveSafeProtocol(H11Protocol):
    """Uvicorn's HTTP/1.1 protocol, except that a worker shutting down (its master retired after a
    USR2 handoff, or a HUP) never closes a keep-alive connection under a client that may be sending
    on it: uvicorn closes idle ones at once, and a client reusing one at that moment gets a reset.
    Here the next answer on it says `Connection: close`, and one that stays idle is closed by the
    keep-alive timeout, as at any other time. The old worker is gone within `keepalive` plus its
    longest request."""

    def shutdown(self) -> None:
        answers = self.server_state.default_headers
        if CONNECTION_CLOSE not in answers:
            answers.append(CONNECTION_CLOSE)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started and CONNECTION_CLOSE not in cycle.default_headers:
                cycle.default_headers = [*cycle.default_headers, CONNECTION_CLOSE]
            cycle.keep_alive = False
        elif self.timeout_keep_alive_task is None and not self.transport.is_closing():
            # Connected but never asked anything: no keep-alive timer runs yet.
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)


def announce_close_after_errors(app: "ASGIApp") -> "ASGIApp":
    """A 500 says `Connection: close`. Starlette answers an unhandled exception with a 500 and then
    re-raises it, and uvicorn closes the connection when it sees the exception: without the header
    the client has already put the connection back in its pool and its next request is reset."""

    async def serve(scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_announcing(message: "Message") -> None:
            if message["type"] == "http.response.start" and message["status"] == 500:
                message = {**message, "headers": [*message.get("headers", []), CONNECTION_CLOSE]}
            await send(message)

        await app(scope, receive, send_announcing)

    return serve


class KeepAliveSafeWorker(UvicornWorker):
    """Closes no keep-alive connection a client may be about to reuse without saying so first."""

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "http": KeepAliveSafeProtocol}

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = announce_close_after_errors(self.wsgi)


_data_dir = Path(os.environ.get("JOBAPP_DATA_DIR") or "./var").resolve()
_metrics_dir = _data_dir / "prometheus"
_metrics_dir.mkdir(parents=True, exist_ok=True)
# Workers inherit this and then write their metrics to files a scrape of any worker can sum.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

bind = [os.environ.get("JOBAPP_BIND") or "127.0.0.1:8000"]
workers = int(os.environ.get("JOBAPP_WORKERS") or "2")
worker_class = KeepAliveSafeWorker
# Idle keep-alive connections close after this long, also while a worker drains; graceful_timeout
# must leave room for it and for the longest request.
keepalive = 2
# No preload_app: HUP and USR2 must import the code now on disk, not the master's copy.
preload_app = False
graceful_timeout = 10
pidfile = os.environ.get("JOBAPP_PID_FILE") or None
accesslog = os.environ.get("JOBAPP_LOG_FILE") or "-"
errorlog = os.environ.get("JOBAPP_LOG_FILE") or "-"
# gunicorn's default is ~/.gunicorn/, shared by every app on the machine.
control_socket = os.environ.get("JOBAPP_CONTROL_SOCKET") or str(_data_dir / "gunicorn.ctl")


def on_starting(server: "Arbiter") -> None:
    # A USR2 handoff starts a second master while the old workers still count requests:
    # only a cold start may drop the old files.
    if server.master_pid:
        return
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink()


def pre_exec(server: "Arbiter") -> None:
    # Under `python -m gunicorn`, argv[0] is gunicorn/__main__.py. USR2 re-executes that path
    # as a script, which puts gunicorn's package dir first on sys.path, where its `http`
    # package hides the standard library's and every new worker fails to import the app.
    args = server.START_CTX["args"]
    script = Path(args[1]) if len(args) > 1 else None
    if script is not None and script.name == "__main__.py" and script.parent.name == "gunicorn":
        server.START_CTX["args"] = [args[0], "-m", "gunicorn", *args[2:]]


def child_exit(server: "Arbiter", worker: "Worker") -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(_metrics_dir))  # type: ignore[no-untyped-call]
