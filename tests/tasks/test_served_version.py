"""What shows the served release of an app whose health answer carries no version: a real app on
loopback that answers `true` (as a FastAPI app's bare health route does), started from a real git
workspace before or after its checkout, and the version command or file the environment file names."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployments.config import EnvironmentConfig, HealthConfig
from deployments.errors import HealthCheckFailed
from flows.verify_prerequisites import staging_not_ready
from tasks.health import assess, check_health, check_staging_health
from tasks.process_state import started_at
from tasks.served_version import VersionNotVerified, VersionUnreadable
from tasks.source import checked_out_at
from tasks.waiting import wait_until
from tests.conftest import free_ports
from tests.tasks.gunicorn_app import environment

APP = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok"} if self.path == "/health" else True).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
open(sys.argv[2], "w").write(str(os.getpid()))  # once it listens
server.serve_forever()
"""


@dataclass
class Sandbox:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                              cwd=self.workspace, check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, release: str) -> str:
        (self.workspace / "release.txt").write_text(release)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", release)
        return self.git("rev-parse", "HEAD")

    def config(self, env: dict[str, str] | None = None, **health: Any) -> EnvironmentConfig:
        """The gunicorn tests' environment (tests/tasks/gunicorn_app) for this app, which reports no version."""
        base = environment(self.root, self.port)
        settings = HealthConfig(check_version=False, required_services=[], timeout_seconds=2, deadline_seconds=2,
                                stable_checks=1, stable_seconds=0, **health)
        return base.model_copy(update={"health": settings, "service": base.service.model_copy(update={"env": env or {}})})

    def start(self) -> int:
        """The app, started now from the workspace; its pid once it answers."""
        self.stop()
        pid_file = self.config().service.pid_file
        pid_file.unlink(missing_ok=True)
        self.process = subprocess.Popen([sys.executable, str(self.root / "app.py"), str(self.port), str(pid_file)],
                                        cwd=self.workspace)
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 10, "the app to write its pid file")
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("SERVICE_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "run").mkdir()
    box = Sandbox(tmp_path, free_ports(1)[0])
    box.workspace.mkdir()
    box.git("init", "-q")
    yield box
    box.stop()


def later() -> None:
    """Long enough for a start and a checkout to be told apart (tasks.served_version.CLOCK_MARGIN)."""
    time.sleep(0.1)


def test_a_version_command_shows_the_served_sha(sandbox: Sandbox) -> None:
    v1 = sandbox.commit("v1")
    # Run in the app's directory with the app's environment: the SHA here comes from its variables.
    config = sandbox.config({"SERVED": v1[:7]},
                            version_command=["{python}", "-c", "import os; print(os.environ['SERVED'])"])
    sandbox.start()
    report = check_health.fn(config, v1, held=False)
    assert report.served.verified and report.served.describe() == f"serving {v1[:7]} (per health.version_command)"
    assert report.describe().endswith(f"api/health HTTP 200, serves {v1[:7]} (per health.version_command)")
    with pytest.raises(HealthCheckFailed) as caught:
        check_health.fn(config, "f" * 40, held=False)
    assert caught.value.cause == f"serving {v1[:7]} (per health.version_command), expected ffffffffffff"


def test_a_version_file_shows_the_served_sha(sandbox: Sandbox) -> None:
    v1 = sandbox.commit("v1")
    config = sandbox.config(version_file="run/served-sha")
    (sandbox.workspace / "run").mkdir()
    (sandbox.workspace / "run" / "served-sha").write_text(v1 + "\n")
    sandbox.start()
    assert check_health.fn(config, v1).served.describe() == f"serving {v1[:12]} (per run/served-sha)"


def test_without_either_the_workspace_shows_it_when_every_process_started_after_the_checkout(
        sandbox: Sandbox) -> None:
    v1 = sandbox.commit("v1")
    later()
    sandbox.start()
    config = sandbox.config()
    seen = f"workspace at {v1[:12]} and every app process started after its checkout"
    assert check_health.fn(config, v1).served.describe() == seen
    # Staging, for production's prerequisite: another environment's workspace, readable on this host.
    assert check_staging_health.fn(config, v1).describe().endswith(f"api/health HTTP 200, {seen}")


def test_a_process_older_than_the_checkout_leaves_it_not_verified(sandbox: Sandbox) -> None:
    sandbox.commit("v1")
    pid = sandbox.start()
    later()
    v2 = sandbox.commit("v2")
    config = sandbox.config()
    why = ("serving version not verified: the health answer carries no version and neither health.version_command "
           f"nor health.version_file is set; app process {pid} started before the workspace's checkout of {v2[:12]}")
    assert assess(config, None, "check health").served.describe() == why
    # Phase 3: the check fails, saying what would show the version.
    with pytest.raises(VersionNotVerified) as caught:
        check_health.fn(config, v2, held=False)
    assert caught.value.cause == f"{why} (expected {v2[:12]})"
    assert caught.value.action.startswith("set health.version_command (or health.version_file)")
    with pytest.raises(HealthCheckFailed, match=r"not verified.*\(not healthy within 2 s\)"):
        check_health.fn(config, v2)
    # The staging prerequisite fails with its two ways out, or passes, said as not verified, when the
    # deploying environment's file accepts that.
    with pytest.raises(VersionNotVerified) as caught:
        check_staging_health.fn(config, v2)
    refused = staging_not_ready("staging", v2, caught.value)
    assert str(refused) == (f"verify staging: staging: {why} (expected {v2[:12]}). set health.version_command in "
                            "staging's file, or set prerequisites.require_staging_version = false to accept an "
                            "unverified staging; nothing was changed")
    assert check_staging_health.fn(config, v2, unverified_ok=True).describe().endswith(f"api/health HTTP 200, {why}")
    # Never another SHA, though: a workspace shown to be elsewhere fails whatever the file accepts.
    later()
    sandbox.start()
    with pytest.raises(HealthCheckFailed, match=r"workspace at \w{12} and every app process started after its "
                                                r"checkout, expected 000000000000"):
        check_staging_health.fn(config, "0" * 40, unverified_ok=True)
    assert check_health.fn(config, v2).served.verified, "restarted after the checkout, it is shown"


def test_a_workspace_this_host_cannot_read_shows_nothing(sandbox: Sandbox) -> None:
    sandbox.start()
    config = sandbox.config()
    elsewhere = config.model_copy(update={"source": config.source.model_copy(
        update={"workspace": sandbox.root / "on-another-host"})})
    assert assess(elsewhere, None, "check health").served.describe().endswith(
        f"; the workspace {sandbox.root / 'on-another-host'} is not readable on this host")


def test_a_version_command_that_prints_garbage_or_fails_is_named(sandbox: Sandbox) -> None:
    sandbox.commit("v1")
    sandbox.start()
    garbage = sandbox.config(version_command=["echo", "v1.4.2"])
    with pytest.raises(VersionUnreadable) as caught:
        check_health.fn(garbage, "f" * 40, held=False)
    assert caught.value.cause == "health.version_command (echo v1.4.2) printed 'v1.4.2', not a SHA (7 to 64 hex digits)"
    assert caught.value.action == "fix health.version_command: it must print the SHA the app serves on its first line"
    assert "in staging's file" in staging_not_ready("staging", "f" * 40, caught.value).action
    failing = sandbox.config(version_command=["sh", "-c", "echo no release here >&2; exit 3"])
    with pytest.raises(VersionUnreadable, match=r"health\.version_command \(sh -c echo no release here >&2; exit 3\) "
                                                r"failed: no release here"):
        assess(failing, None, "check health")
    missing = sandbox.config(version_file="run/served-sha")
    with pytest.raises(VersionUnreadable, match=r"health\.version_file .*/workspace/run/served-sha cannot be read "
                                                r"\(No such file or directory\)"):
        assess(missing, None, "check health")


def test_the_checkout_time_is_the_reflog_of_the_move_and_a_start_is_told_to_the_tick(sandbox: Sandbox) -> None:
    v1 = sandbox.commit("v1")
    v2 = sandbox.commit("v2")
    sandbox.git("checkout", "-q", "--detach", v2)  # as a deploy leaves its workspace
    moved = checked_out_at(sandbox.workspace, v2)
    assert moved is not None and moved == (sandbox.workspace / ".git" / "logs" / "HEAD").stat().st_mtime
    assert checked_out_at(sandbox.workspace, v1) is None, "the last move was to v2"
    later()
    sandbox.git("checkout", "-q", "--force", "--detach", v2)  # no move, no entry: v2 was checked out before
    assert checked_out_at(sandbox.workspace, v2) == moved
    before = time.time()
    pid = sandbox.start()
    started = started_at(pid)
    assert started is not None and before - 0.02 <= started <= time.time()
