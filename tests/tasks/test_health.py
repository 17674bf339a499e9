"""Health checks against real HTTP servers on loopback, whose answers each test scripts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import HealthCheckFailed
from tasks.health import HealthReport, assess, check_health, check_staging_health, hold, probe
from tests.conftest import free_ports

PROJECT = Path(__file__).resolve().parents[2]
SHA = "3f1c2a9b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"
OTHER_SHA = "0123456789abcdef0123456789abcdef01234567"
SERVICES = ("database", "scraper", "ai", "documents", "email")

Answer = tuple[int, Any, dict[str, str]]


def environment(tmp_path: Path, base_url: str, timeout: float = 1.0, check_version: bool = True,
                stable: tuple[int, float] = (3, 6), deadline: float = 30) -> EnvironmentConfig:
    """The committed production file, pointed at `base_url`, with a short timeout."""
    text = (PROJECT / "deployments" / "production.toml").read_text()
    text = text.replace("stable_checks = 3", f"stable_checks = {stable[0]}")
    text = text.replace("stable_seconds = 6", f"stable_seconds = {stable[1]}")
    text = text.replace("deadline_seconds = 30", f"deadline_seconds = {deadline}")
    text = text.replace("../.sandbox", str(tmp_path)).replace('"http://127.0.0.1:8102"', f'"{base_url}"')
    text = text.replace("timeout_seconds = 5", f"timeout_seconds = {timeout}")
    text = text.replace("check_version = true", f"check_version = {str(check_version).lower()}")
    (tmp_path / "production.toml").write_text(text)
    return load_environment_file(tmp_path / "production.toml")


def services(**states: tuple[str, str]) -> dict[str, dict[str, Any]]:
    report = {name: {"status": "ok", "detail": f"{name} answered", "latency_ms": 1.5} for name in SERVICES}
    for name, (status, detail) in states.items():
        report[name] = {"status": status, "detail": detail, "latency_ms": 2.0}
    return report


def api_body(status: str = "ok", version: str | None = SHA, maintenance: bool = False,
             **states: tuple[str, str]) -> dict[str, Any]:
    return {"status": status, "version": version, "environment": "production", "maintenance": maintenance,
            "services": services(**states)}


LIVE: Answer = (200, {"status": "ok"}, {})
HEALTHY: Answer = (200, api_body(), {})


@dataclass
class App:
    """A scripted app: each path answers its list of answers in order, the last one from then on."""

    base_url: str
    script: dict[str, list[Answer]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def answer(self, path: str, *answers: Answer) -> None:
        self.script[path] = list(answers)

    def next(self, path: str) -> Answer:
        answers = self.script.get(path) or [(404, {"detail": "Not Found"}, {})]
        index = self.hits[path]
        self.hits[path] += 1
        return answers[min(index, len(answers) - 1)]


@pytest.fixture
def app() -> Iterator[App]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    scripted = App(f"http://127.0.0.1:{server.server_port}")
    scripted.answer("/health", LIVE)
    scripted.answer("/api/health", HEALTHY)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body, headers = scripted.next(self.path)
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield scripted
    server.shutdown()
    server.server_close()


class RawServer:
    """A listener that accepts connections and hands each to `serve(conn, stop)` on a thread."""

    def __init__(self, serve: Any) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.stop = threading.Event()
        self.connections: list[socket.socket] = []
        self.serve = serve
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)
            threading.Thread(target=self.serve, args=(conn, self.stop), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()
        self.listener.close()


def never_answer(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait()


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    """A status line, then one byte of a header every 0.2 s: never a whole answer, never silent."""
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(0.2):
            conn.sendall(b"x")
    except OSError:
        pass


@pytest.fixture
def silent() -> Iterator[RawServer]:
    server = RawServer(never_answer)
    yield server
    server.close()


@pytest.fixture
def trickling() -> Iterator[RawServer]:
    server = RawServer(trickle)
    yield server
    server.close()


def failure(config: EnvironmentConfig, expected: str | None = SHA, allow_maintenance: bool = False) -> str:
    with pytest.raises(HealthCheckFailed) as caught:
        assess(config, expected, f"check health ({config.name})", allow_maintenance)
    return str(caught.value)


def test_a_healthy_app_serving_the_expected_sha(app: App, tmp_path: Path) -> None:
    config = environment(tmp_path, app.base_url, stable=(2, 0.5))
    report = check_health.fn(config, SHA, held=False)
    assert isinstance(report, HealthReport)
    assert report.version == SHA
    assert report.liveness.ok and report.api.ok
    assert report.api.body is not None and set(report.api.body["services"]) == set(SERVICES)
    assert report.describe() == (f"{app.base_url}/health HTTP 200; {app.base_url}/api/health HTTP 200, "
                                 f"status 'ok', serves {SHA[:12]}")
    assert check_staging_health.fn(config, SHA).version == SHA
    assert check_staging_health.fn(config).version == SHA  # no expected SHA: any version will do
    assert app.hits["/health"] == 3 and app.hits["/api/health"] == 3
    held = check_health.fn(config, SHA)
    assert held.checks >= 2 and held.held_seconds >= 0.5 and held.describe().startswith(report.describe() + "; held")


def test_probe_never_caches_and_reports_headers(app: App) -> None:
    app.answer("/health", (200, {"status": "ok"}, {"X-Served-By": "worker-1"}))
    answer = probe(app.base_url + "/health", 1.0)
    assert answer.ok and answer.body == {"status": "ok"} and answer.error is None
    assert answer.headers["x-served-by"] == "worker-1"
    assert answer.describe() == f"{app.base_url}/health answered HTTP 200"


def test_503_is_unhealthy_naming_the_step_url_status_and_next_action(app: App, tmp_path: Path) -> None:
    app.answer("/api/health", (503, api_body(status="degraded"), {}))
    config = environment(tmp_path, app.base_url)
    message = failure(config)
    assert message.startswith("check health (production): ")
    assert f"{app.base_url}/api/health answered HTTP 503" in message
    assert "read the app's log" in message
    with pytest.raises(HealthCheckFailed) as caught:
        check_staging_health.fn(config)
    assert caught.value.step == "check staging health (production)"
    assert "answered HTTP 503" in caught.value.cause


def test_liveness_503_fails_even_when_the_api_is_healthy(app: App, tmp_path: Path) -> None:
    app.answer("/health", (503, {"detail": "starting"}, {}))
    message = failure(environment(tmp_path, app.base_url))
    assert f"{app.base_url}/health answered HTTP 503" in message


def test_an_endpoint_that_accepts_and_never_answers_is_bounded(silent: RawServer, tmp_path: Path) -> None:
    config = environment(tmp_path, silent.base_url, timeout=1.0)
    started = time.monotonic()
    message = failure(config)
    assert time.monotonic() - started < 10
    assert f"{silent.base_url}/health did not answer (no answer within 1 s)" in message
    assert silent.connections, "the server accepted the connection"


def test_an_endpoint_that_trickles_bytes_is_bounded_too(trickling: RawServer) -> None:
    # Each byte resets a per-read timeout; only a deadline on the whole request ends this one.
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(probe(trickling.base_url + "/health", 1.0)),
                              daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "probe() was still waiting after 10 s on a 1 s timeout"
    assert not outcome[0].ok and outcome[0].status_code is None
    assert outcome[0].error == "no answer within 1 s"


def test_connection_refused_is_unhealthy(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    message = failure(environment(tmp_path, f"http://127.0.0.1:{port}"))
    assert f"http://127.0.0.1:{port}/health did not answer (ConnectError" in message


def test_a_redirect_is_not_followed_and_is_unhealthy(app: App, tmp_path: Path) -> None:
    app.answer("/api/health", (302, {}, {"Location": "/login"}))
    app.answer("/login", HEALTHY)
    message = failure(environment(tmp_path, app.base_url))
    assert f"{app.base_url}/api/health answered HTTP 302" in message
    assert "redirects are not followed: point health at the final URL" in message
    assert app.hits["/login"] == 0


def test_a_service_in_error_is_named_with_its_detail(app: App, tmp_path: Path) -> None:
    # An app that answers 200 while a service is down: the service list is the judge.
    app.answer("/api/health", (200, api_body(ai=("error", "RuntimeError: canary scored 0.0")), {}))
    message = failure(environment(tmp_path, app.base_url))
    assert "reports unhealthy services (ai: RuntimeError: canary scored 0.0)" in message
    assert "fix the service named" in message


def test_a_503_naming_a_broken_service_says_which(app: App, tmp_path: Path) -> None:
    # jobapp answers 503 when a service is down; the message must still name it, not only the status.
    broken = api_body(status="degraded", email=("error", "OperationalError: no such table: outbox"))
    app.answer("/api/health", (503, broken, {}))
    message = failure(environment(tmp_path, app.base_url))
    assert "answered HTTP 503" in message
    assert "email: OperationalError: no such table: outbox" in message
    assert "database" not in message.split("answered HTTP 503", 1)[1]


def test_a_missing_service_and_a_body_that_is_not_json(app: App, tmp_path: Path) -> None:
    body = api_body()
    del body["services"]["documents"]
    app.answer("/api/health", (200, body, {}))
    config = environment(tmp_path, app.base_url)
    assert "reports unhealthy services (documents: missing)" in failure(config)
    app.answer("/api/health", (200, "<html>It works!</html>", {}))
    message = failure(config)
    assert "database: missing; scraper: missing; ai: missing; documents: missing; email: missing" in message


def test_the_wrong_version_fails_when_checked(app: App, tmp_path: Path) -> None:
    app.answer("/api/health", (200, api_body(version=OTHER_SHA), {}))
    message = failure(environment(tmp_path, app.base_url))
    assert f"serves {OTHER_SHA[:12]}, expected {SHA[:12]}" in message
    assert "the reload did not take" in message
    app.answer("/api/health", (200, api_body(version=None), {}))
    assert f"serves None, expected {SHA[:12]}" in failure(environment(tmp_path, app.base_url))


def test_the_version_is_accepted_when_not_checked(app: App, tmp_path: Path) -> None:
    # The answer's version is the app's own (a build number, say); the served SHA is what the version file
    # shows. Without one, nothing would show it: tests/tasks/test_served_version.py.
    app.answer("/api/health", (200, api_body(version=OTHER_SHA), {}))
    config = environment(tmp_path, app.base_url, check_version=False)
    config = config.model_copy(update={"health": config.health.model_copy(update={"version_file": "served-sha"})})
    config.app_dir().mkdir(parents=True)
    (config.app_dir() / "served-sha").write_text(SHA + "\n")
    report = check_health.fn(config, SHA)
    assert report.version == OTHER_SHA
    assert report.served.describe() == f"serving {SHA[:12]} (per served-sha)"


def test_maintenance_mode_is_accepted_only_when_allowed(app: App, tmp_path: Path) -> None:
    app.answer("/health", (503, {"detail": "jobapp is in maintenance", "retry_after": 30}, {"Retry-After": "30"}))
    app.answer("/api/health", (503, api_body(status="maintenance", maintenance=True), {}))
    config = environment(tmp_path, app.base_url)
    assert "/health answered HTTP 503" in failure(config)
    report = assess(config, SHA, "check health (production)", allow_maintenance=True)
    assert report.version == SHA and report.liveness.status_code == 503


def test_maintenance_does_not_excuse_other_failures(app: App, tmp_path: Path) -> None:
    config = environment(tmp_path, app.base_url)
    # A 503 without the app saying it is in maintenance is an outage.
    app.answer("/api/health", (503, api_body(status="degraded"), {}))
    assert "/api/health answered HTTP 503" in failure(config, allow_maintenance=True)
    # In maintenance, but a 500 is a crash, and a broken service is still broken.
    app.answer("/api/health", (500, api_body(status="maintenance", maintenance=True), {}))
    assert "/api/health answered HTTP 500" in failure(config, allow_maintenance=True)
    app.answer("/api/health", (503, api_body(status="maintenance", maintenance=True,
                                              database=("error", "OperationalError: disk I/O error")), {}))
    assert "database: OperationalError: disk I/O error" in failure(config, allow_maintenance=True)


def test_a_slow_start_passes_on_a_later_attempt(app: App, tmp_path: Path) -> None:
    # What `check_health.with_options(retries=...)` does in the flow, one attempt per call.
    starting = (503, {"status": "starting", "services": {}}, {})
    app.answer("/api/health", starting, starting, starting, HEALTHY)
    config = environment(tmp_path, app.base_url)
    failures: list[str] = []
    report = None
    for _attempt in range(6):
        try:
            report = check_health.fn(config, SHA, held=False)
            break
        except HealthCheckFailed as exc:
            failures.append(exc.cause)
    assert report is not None and report.version == SHA
    assert len(failures) == 3 and all("answered HTTP 503" in cause for cause in failures)
    assert app.hits["/api/health"] == 4


# --- health must hold after a reload -------------------------------------------------------------------------

STARTING: Answer = (503, {"status": "starting", "services": {}}, {})
DEGRADED: Answer = (503, api_body("degraded", scraper=("error", "RuntimeError: source cache expired")), {})


def holding(config: EnvironmentConfig) -> tuple[HealthReport | HealthCheckFailed, list[str], float]:
    said: list[str] = []
    started = time.monotonic()
    try:
        outcome: HealthReport | HealthCheckFailed = hold(config, SHA, "check health (production)", said.append)
    except HealthCheckFailed as exc:
        outcome = exc
    return outcome, said, time.monotonic() - started


def test_health_must_hold_over_the_window_after_a_slow_start(app: App, tmp_path: Path) -> None:
    app.answer("/api/health", STARTING, STARTING, HEALTHY)
    report, said, took = holding(environment(tmp_path, app.base_url, stable=(3, 1.5)))
    assert isinstance(report, HealthReport), report
    assert report.checks >= 3 and report.held_seconds >= 1.5 and took >= 1.5
    assert report.describe().endswith(f"held for {report.checks} checks over {report.held_seconds:.1f} s")
    assert said[0].startswith("check health (production): not healthy yet (") and "answered HTTP 503" in said[0]
    assert said[1] == "check health (production): healthy; it must stay so for 3 checks over 1.5 s"
    assert len(said) == 2, "a slow start is said once, not at every check"


def test_a_release_that_turns_unhealthy_after_it_answered_fails_at_once(app: App, tmp_path: Path) -> None:
    """200 as it boots, 503 seconds later: not a success, and no retry until the deadline either."""
    app.answer("/api/health", HEALTHY, HEALTHY, DEGRADED)
    error, _, took = holding(environment(tmp_path, app.base_url, stable=(3, 4)))
    assert isinstance(error, HealthCheckFailed)
    assert error.cause.startswith(f"healthy at first, then {app.base_url}/api/health answered HTTP 503; unhealthy "
                                  "services: scraper: RuntimeError: source cache expired "), error.cause
    assert error.cause.endswith("s later (after 2 good checks)")
    assert error.action == "the release does not hold its health; read the app's log"
    assert took < 10, "a relapse fails the step at once"


def test_a_release_that_stops_serving_the_deployed_sha_fails_too(app: App, tmp_path: Path) -> None:
    app.answer("/api/health", HEALTHY, (200, api_body(version=OTHER_SHA), {}))
    error, _, _ = holding(environment(tmp_path, app.base_url, stable=(3, 2)))
    assert isinstance(error, HealthCheckFailed)
    assert f"serves {OTHER_SHA[:12]}, expected {SHA[:12]}" in error.cause and "(after 1 good checks)" in error.cause


def test_an_app_that_never_becomes_healthy_fails_at_the_deadline(app: App, tmp_path: Path) -> None:
    app.answer("/api/health", STARTING)
    error, said, took = holding(environment(tmp_path, app.base_url, stable=(3, 1), deadline=2))
    assert isinstance(error, HealthCheckFailed)
    assert error.cause.endswith("answered HTTP 503 (not healthy within 2 s)") and 2 <= took < 10, error.cause
    assert len(said) == 1


def test_one_check_and_no_window_take_the_first_good_answer(app: App, tmp_path: Path) -> None:
    app.answer("/api/health", HEALTHY, DEGRADED)
    report, said, _ = holding(environment(tmp_path, app.base_url, stable=(1, 0)))
    assert isinstance(report, HealthReport) and report.checks == 1 and said == []
