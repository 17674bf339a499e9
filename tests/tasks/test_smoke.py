"""Critical-path tests against a real app on loopback that answers like jobapp, or breaks on purpose."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployments.config import CriticalPathCheck, EnvironmentConfig, load_environment_file
from deployments.errors import HealthCheckFailed
from tasks.smoke import SmokeReport, run_checks, run_critical_path_tests
from tests.conftest import free_ports

PROJECT = Path(__file__).resolve().parents[2]


def environment(tmp_path: Path, base_url: str) -> EnvironmentConfig:
    """The committed production file, whose four critical paths are jobapp's, pointed at `base_url`."""
    text = (PROJECT / "deployments" / "production.toml").read_text()
    text = text.replace("../.sandbox", str(tmp_path)).replace('"http://127.0.0.1:8102"', f'"{base_url}"')
    text = text.replace("timeout_seconds = 5", "timeout_seconds = 2")
    (tmp_path / "production.toml").write_text(text)
    return load_environment_file(tmp_path / "production.toml")


def jobapp_answer(path: str, body: Any) -> tuple[int, Any]:
    if path == "/api/scrape":
        return 200, {"scraped": 3, "job_ids": [11, 12, 13]}
    if path == "/api/analyze":
        if not isinstance(body, dict) or not isinstance(body.get("job_id"), int):
            return 422, {"detail": "job_id must be an integer"}
        return 200, {"job_id": body["job_id"], "score": 0.82, "matched": ["python"], "model": "keyword-v1"}
    if path == "/api/documents/cover-letter":
        return 200, {"document_id": 7, "bytes": 1200, "sha256": "ab" * 32}
    if path == "/api/email":
        return 200, {"id": 41, "status": "queued"}
    return 404, {"detail": "Not Found"}


@dataclass
class App:
    base_url: str
    # path -> (status, body) replacing jobapp's answer; a str body is sent as text.
    broken: dict[str, tuple[int, Any]] = field(default_factory=dict)
    received: list[tuple[str, str, Any, str | None]] = field(default_factory=list)


@pytest.fixture
def app() -> Iterator[App]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = App(f"http://127.0.0.1:{server.server_port}")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.received.append((self.command, self.path, body, self.headers.get("X-User-Id")))
            status, answer = state.broken.get(self.path) or jobapp_answer(self.path, body)
            payload = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


def by_name(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


def test_every_critical_path_passes_on_a_healthy_app(app: App, tmp_path: Path) -> None:
    config = environment(tmp_path, app.base_url)
    results = run_checks(app.base_url, config.critical_paths, 2.0)
    assert [(r.name, r.ok, r.status_code) for r in results] == [
        ("job-scraping", True, 200), ("ai-analysis", True, 200),
        ("document-generation", True, 200), ("email-integration", True, 200)]
    # The later checks were sent the first job id the scrape answered, as an integer.
    sent = {path: body for _method, path, body, _user in app.received}
    assert sent["/api/analyze"] == {"job_id": 11, "profile": "python fastapi postgresql alembic"}
    assert sent["/api/documents/cover-letter"] == {"job_id": 11, "applicant": "Release Check"}
    assert {user for *_rest, user in app.received} == {"release-check"}
    assert results[0].detail.startswith("POST /api/scrape HTTP 200 in ")
    report = run_critical_path_tests.fn(config)
    assert isinstance(report, SmokeReport) and all(r.ok for r in report.results)
    assert report.describe().startswith("job-scraping: ok (POST /api/scrape HTTP 200 in ")


def test_a_wrong_status_fails_with_the_answer(app: App, tmp_path: Path) -> None:
    app.broken["/api/email"] = (202, {"id": 41, "status": "queued"})
    results = by_name(run_checks(app.base_url, environment(tmp_path, app.base_url).critical_paths, 2.0))
    assert not results["email-integration"].ok and results["email-integration"].status_code == 202
    assert results["email-integration"].detail == (
        'POST /api/email answered HTTP 202, expected 200: {"id": 41, "status": "queued"}')
    assert all(results[name].ok for name in ("job-scraping", "ai-analysis", "document-generation"))


def test_missing_keys_fail_naming_them(app: App, tmp_path: Path) -> None:
    app.broken["/api/analyze"] = (200, {"score": 0.5})
    app.broken["/api/email"] = (200, "<html>queued</html>")
    results = by_name(run_checks(app.base_url, environment(tmp_path, app.base_url).critical_paths, 2.0))
    assert results["ai-analysis"].detail == "POST /api/analyze answer lacks matched, model"
    assert results["email-integration"].detail == "POST /api/email answer lacks id, status"


def test_a_check_that_depends_on_a_failed_one_is_not_run(app: App, tmp_path: Path) -> None:
    app.broken["/api/scrape"] = (500, {"detail": "source unreachable"})
    results = by_name(run_checks(app.base_url, environment(tmp_path, app.base_url).critical_paths, 2.0))
    assert results["job-scraping"].detail.startswith("POST /api/scrape answered HTTP 500, expected 200")
    for name in ("ai-analysis", "document-generation"):
        assert not results[name].ok and results[name].status_code is None
        assert results[name].detail.endswith(" not run: {{ job-scraping.job_ids.0 }} has no value: no earlier "
                                             "check 'job-scraping' answered")
    assert results["email-integration"].ok  # it needs nothing from the scrape
    assert [path for _m, path, _b, _u in app.received] == ["/api/scrape", "/api/email"]


def test_connection_refused(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    base_url = f"http://127.0.0.1:{port}"
    results = by_name(run_checks(base_url, environment(tmp_path, base_url).critical_paths, 2.0))
    assert results["job-scraping"].detail == "POST /api/scrape did not answer (ConnectError)"
    assert results["email-integration"].detail == "POST /api/email did not answer (ConnectError)"
    assert results["ai-analysis"].detail.startswith("POST /api/analyze not run: ")
    assert not any(r.ok for r in results.values())


def test_a_get_check_with_no_body_and_its_own_status(app: App) -> None:
    checks = [CriticalPathCheck(name="missing-page", path="/nowhere", expect_status=404, expect_keys=["detail"])]
    (result,) = run_checks(app.base_url, checks, 2.0)
    assert result.ok and result.status_code == 404
    assert app.received == [("GET", "/nowhere", None, "release-check")]


def test_run_critical_path_tests_names_every_failed_check(app: App, tmp_path: Path) -> None:
    app.broken["/api/scrape"] = (500, {"detail": "source unreachable"})
    app.broken["/api/email"] = (503, {"detail": "smtp down"})
    with pytest.raises(HealthCheckFailed) as caught:
        run_critical_path_tests.fn(environment(tmp_path, app.base_url))
    error = caught.value
    assert error.step == "run critical path tests (production)"
    assert error.cause.startswith("job-scraping: POST /api/scrape answered HTTP 500, expected 200")
    for name in ("ai-analysis: POST /api/analyze not run", "document-generation: POST /api/documents/cover-letter not run",
                 'email-integration: POST /api/email answered HTTP 503, expected 200: {"detail": "smtp down"}'):
        assert name in error.cause
    assert error.action == "the release breaks a critical path; it will be rolled back"
