"""check-canary against a real process: a small HTTP app started through [service.canary] on a free
loopback port, which behaves well or badly as the test tells it. The step must pass a good release,
fail a bad one before it takes traffic, and leave no process and no scratch directory behind."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import ConfigError, LiveDatabaseTouched, ServiceError
from tasks.canary import check_canary

PROJECT = Path(__file__).resolve().parents[2]
SHA = "3f1c2a9b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"

APP = r'''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

here = Path(sys.argv[1])
mode = (here / "mode").read_text().strip()
(here / "seen.json").write_text(json.dumps({"pid": os.getpid(), "scratch": os.environ["SCRATCH"],
                                            "database": os.environ.get("JOBAPP_DATABASE_URL"),
                                            "orchestrator_key": "PREFECT_API_KEY" in os.environ}))
if mode == "exit":
    print("boom: cannot start", flush=True)
    sys.exit(3)
if mode == "silent":
    time.sleep(600)
if mode == "creates-tables":  # an app that "helpfully" makes its tables as it starts
    import sqlite3
    sqlite3.connect(os.environ["JOBAPP_DATABASE_URL"].removeprefix("sqlite:///")).execute(
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY)")
    mode = "good"
SERVICES = ["database", "scraper", "ai", "documents", "email"]
ANSWERS = {"/api/scrape": {"scraped": 1, "job_ids": [7]}, "/api/analyze": {"score": 0.5, "matched": [], "model": "m"},
           "/api/documents/cover-letter": {"document_id": 1, "bytes": 10, "sha256": "x"},
           "/api/email": {"id": 1, "status": "queued"}}

class Handler(BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, {"status": "ok"})
        services = {name: {"status": "ok"} for name in SERVICES}
        version = os.environ["SHA"]
        if mode == "unhealthy":
            services["documents"] = {"status": "error", "detail": "AttributeError: 'NoneType' object has no attribute 'lower'"}
        if mode == "old-code":
            version = "0" * 40
        self.answer(503 if mode == "unhealthy" else 200, {"status": "ok", "version": version, "services": services})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if mode == "broken-letters" and self.path == "/api/documents/cover-letter":
            return self.answer(500, {"detail": "Internal Server Error"})
        self.answer(200, ANSWERS[self.path])

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def environment(tmp_path: Path, mode: str, timeout: float = 20.0) -> EnvironmentConfig:
    """The committed production file with a canary that runs APP in `mode`."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "mode").write_text(mode)
    (tmp_path / "production" / "app").mkdir(parents=True)
    (tmp_path / "sandbox.env").write_text(f"JOBAPP_PRODUCTION_DATABASE_URL=sqlite:///{tmp_path}/secret.db\n")
    sqlite3.connect(tmp_path / "secret.db").close()  # production's database, whose schema the canary must not move
    text = (PROJECT / "deployments" / "production.toml").read_text()
    text = text.replace("../.sandbox", str(tmp_path)).replace('"../.venv/bin/python"', json.dumps(sys.executable))
    start, end = text.index("[service.canary]"), text.index("[database]")
    text = text[:start] + (
        "[service.canary]\n"
        f'start_command = ["{{python}}", "{tmp_path}/app.py", "{tmp_path}"]\n'
        f'env = {{ PORT = "{{port}}", SCRATCH = "{{scratch}}", SHA = "{SHA}" }}\n'
        f"timeout_seconds = {timeout}\n\n"
    ) + text[end:]
    (tmp_path / "production.toml").write_text(text)
    return load_environment_file(tmp_path / "production.toml")


def seen(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "seen.json").read_text())


def assert_cleaned_up(tmp_path: Path) -> None:
    started = seen(tmp_path)
    assert not Path(str(started["scratch"])).exists(), "the canary's scratch directory is removed"
    deadline = time.monotonic() + 5
    while Path(f"/proc/{started['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{started['pid']}").exists(), "the canary process is stopped"


def test_a_good_release_passes_health_and_the_critical_paths_on_the_canary(tmp_path: Path) -> None:
    detail = check_canary.fn(environment(tmp_path, "good"), SHA)
    assert detail.startswith("health and 4 critical paths passed on a canary at http://127.0.0.1:")
    assert f"serving {SHA[:12]}" in detail
    assert seen(tmp_path)["database"] == f"sqlite:///{tmp_path}/secret.db", "the canary gets the app's secrets"
    assert_cleaned_up(tmp_path)


def test_a_canary_that_changes_the_live_schema_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(LiveDatabaseTouched) as caught:
        check_canary.fn(environment(tmp_path, "creates-tables"), SHA)
    assert "the canary changed the LIVE database of production (schema fingerprint" in str(caught.value)
    assert_cleaned_up(tmp_path)


def test_a_release_that_reports_no_version_is_shown_by_the_canary_it_started(tmp_path: Path) -> None:
    environment(tmp_path, "good")
    text = (tmp_path / "production.toml").read_text().replace("check_version = true", "check_version = false")
    (tmp_path / "production.toml").write_text(text)
    workspace = tmp_path / "production" / "app"
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "--allow-empty",
                    "-m", "release"], cwd=workspace, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, check=True, capture_output=True,
                          text=True).stdout.strip()
    time.sleep(0.1)  # the canary starts after the checkout, as it does after the migrations
    detail = check_canary.fn(load_environment_file(tmp_path / "production.toml"), head)
    assert re.search(rf"^health and 4 critical paths passed on a canary at http://127\.0\.0\.1:\d+, workspace at "
                     rf"{head[:12]} and every canary process started after its checkout \(", detail), detail
    # A version command runs with the canary's variables: SHA is one of them, not production's.
    (tmp_path / "production.toml").write_text(text.replace("check_version = false", "check_version = false\n"
                                                           "version_command = [\"printenv\", \"SHA\"]"))
    detail = check_canary.fn(load_environment_file(tmp_path / "production.toml"), SHA)
    assert f"serving {SHA[:12]} (per health.version_command) (" in detail


@pytest.mark.parametrize(("mode", "cause"), [
    ("unhealthy", "answered HTTP 503; unhealthy services: documents: AttributeError"),
    ("broken-letters", "document-generation: POST /api/documents/cover-letter answered HTTP 500"),
    ("old-code", f"serves 000000000000, expected {SHA[:12]}"),
])
def test_a_release_failing_on_the_canary_fails_before_taking_traffic(tmp_path: Path, mode: str, cause: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_canary.fn(environment(tmp_path, mode), SHA)
    message = str(caught.value)
    assert message.startswith("check canary (production): the release failed on a canary at http://127.0.0.1:")
    assert "before taking traffic" in message and cause in message, message
    assert "production still runs the previous release" in message
    assert "secret.db" not in message
    assert_cleaned_up(tmp_path)


def test_a_canary_that_exits_says_so_with_its_last_log_line(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match=r"canary exited with status 3 before answering \(its log ends: "
                                           r"boom: cannot start\)"):
        check_canary.fn(environment(tmp_path, "exit"), SHA)
    assert not Path(str(seen(tmp_path)["scratch"])).exists()


def test_a_canary_that_never_answers_is_given_up_on_and_stopped(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match=r"did not answer http://127\.0\.0\.1:\d+/health within 1 s"):
        check_canary.fn(environment(tmp_path, "silent", timeout=1), SHA)
    assert_cleaned_up(tmp_path)


def test_without_a_canary_table_the_step_says_the_release_goes_unchecked(tmp_path: Path) -> None:
    config = environment(tmp_path, "good")
    config = config.model_copy(update={"service": config.service.model_copy(update={"canary": None})})
    assert "the release meets traffic unchecked" in check_canary.fn(config, SHA)
    assert not (tmp_path / "seen.json").exists()


def test_a_canary_must_be_moved_off_the_production_port(tmp_path: Path) -> None:
    environment(tmp_path, "good")
    path = tmp_path / "production.toml"
    path.write_text(path.read_text().replace('PORT = "{port}", ', ""))
    with pytest.raises(ConfigError, match="one variable must bind the canary to `{port}`"):
        load_environment_file(path)


def test_the_canary_does_not_inherit_the_orchestrators_environment(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_not_for_the_app")
    check_canary.fn(environment(tmp_path, "good"), SHA)
    assert seen(tmp_path)["orchestrator_key"] is False


def test_a_killed_deploy_takes_its_canary_with_it(tmp_path: Path) -> None:
    environment(tmp_path, "silent", timeout=60)
    deploy = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from deployments.config import load_environment_file; "
         "from tasks.canary import check_canary; check_canary.fn(load_environment_file(Path(sys.argv[1])), sys.argv[2])",
         str(tmp_path / "production.toml"), SHA], cwd=PROJECT)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "seen.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "seen.json").exists(), "the canary did not start"
    finally:
        deploy.kill()
        deploy.wait()
    pid = seen(tmp_path)["pid"]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the canary outlived the deploy that started it"


def test_a_canary_whose_port_was_taken_as_it_started_is_started_on_another(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the choice of a free port and the canary's bind, another process (or an outgoing
    connection's local port) can take it: the canary exits saying its address is in use, and is started
    again on another port rather than failing the release."""
    import socket

    import tasks.canary

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    choices = iter([port])
    chosen = tasks.canary._free_port
    monkeypatch.setattr(tasks.canary, "_free_port", lambda: next(choices, None) or chosen())
    try:
        said = check_canary.fn(environment(tmp_path, "good"), SHA)
    finally:
        taken.close()
    moved = re.search(r"on a canary at http://127\.0\.0\.1:(\d+)", said)
    assert moved is not None and int(moved[1]) != port, said
    assert_cleaned_up(tmp_path)


@pytest.mark.parametrize("said, taken", [
    ("OSError: [Errno 98] Address already in use", True),  # Python's http.server
    ("[ERROR] Connection in use: ('127.0.0.1', 46569)", True),  # gunicorn
    ("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use", True),  # uvicorn
    ("Error: listen EADDRINUSE: address already in use 127.0.0.1:3000", True),  # node
    ("ModuleNotFoundError: No module named 'jobapp'", False),
])
def test_a_taken_port_is_told_from_the_canarys_log_whatever_server_says_it(tmp_path: Path, said: str, taken: bool) -> None:
    from tasks.canary import _port_taken

    log = tmp_path / "canary.log"
    log.write_text("Address already in use (an earlier start's line, before this one)\n")
    before = log.stat().st_size
    with log.open("a") as out:
        out.write(said + "\n")
    assert _port_taken(log, before) is taken
