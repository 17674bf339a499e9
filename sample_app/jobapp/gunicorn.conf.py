"""gunicorn settings for jobapp: ``python -m gunicorn -c gunicorn.conf.py jobapp.app:app``.

Environment: JOBAPP_BIND (127.0.0.1:8000), JOBAPP_WORKERS (2), JOBAPP_PID_FILE,
JOBAPP_LOG_FILE (access and error log; stdout and stderr when unset), JOBAPP_CONTROL_SOCKET
(default $JOBAPP_DATA_DIR/gunicorn.ctl), JOBAPP_DATA_DIR (./var).
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

_data_dir = Path(os.environ.get("JOBAPP_DATA_DIR") or "./var").resolve()
_metrics_dir = _data_dir / "prometheus"
_metrics_dir.mkdir(parents=True, exist_ok=True)
# Workers inherit this and then write their metrics to files a scrape of any worker can sum.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

bind = [os.environ.get("JOBAPP_BIND") or "127.0.0.1:8000"]
workers = int(os.environ.get("JOBAPP_WORKERS") or "2")
worker_class = "uvicorn_worker.UvicornWorker"
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
