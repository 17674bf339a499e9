"""The startup-log watch after a restart, on a real gunicorn app (tests/tasks/gunicorn_app.py)."""

from __future__ import annotations

import time

import pytest

from deployments.errors import ServiceError
from tasks.service import log_offset, watch_startup_logs
from tests.tasks.gunicorn_app import App


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
