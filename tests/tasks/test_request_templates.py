"""Critical paths as a real API's smoke test needs them: templates filled from earlier answers and
secrets anywhere in a request, expectations on values, a form login whose token and cookie the later
checks carry, a budget; and no secret in any result. Table-driven where it is pure; a real HTTP
server on loopback where it is not."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from deployments.config import CriticalPathCheck, Expectation
from deployments.secrets import redact, register_secret
from tasks.request_templates import at, fill, unmet
from tasks.smoke import run_checks
from tests.conftest import free_ports

ANSWERS = {"login": {"access_token": "tok-123", "token_type": "bearer"},
           "job-scraping": {"job_ids": [11, 12], "meta": {"source": {"name": "sample"}}, "ok": True}}
SECRETS = {"password": "hunter2"}


@pytest.mark.parametrize(("template", "filled"), [
    ("{{ job-scraping.job_ids.1 }}", 12),  # a whole-value reference keeps the answer's type
    ("{{job-scraping.meta.source.name}}", "sample"),
    ("{{ job-scraping.job_ids }}", [11, 12]),
    ("{{ job-scraping.job_ids.-1 }}", 12),
    ("Bearer {{ login.access_token }}", "Bearer tok-123"),  # or goes into text
    ("/api/jobs/{{ job-scraping.job_ids.0 }}/notes", "/api/jobs/11/notes"),
    ("ok={{ job-scraping.ok }}", "ok=true"),
    ("{{ secrets.password }}", "hunter2"),
    ("no braces", "no braces"),
    ({"nested": ["{{ login.token_type }}", 3, None]}, {"nested": ["bearer", 3, None]}),
    (7, 7),
])
def test_a_template_takes_values_from_earlier_answers_and_secrets(template: Any, filled: Any) -> None:
    assert fill(template, ANSWERS, SECRETS) == filled


@pytest.mark.parametrize(("template", "why"), [
    ("{{ job-scraping.job_ids.5 }}", "{{ job-scraping.job_ids.5 }} has no value: no '5' in [11, 12]"),
    ("{{ job-scraping.ids.0 }}", "{{ job-scraping.ids.0 }} has no value: no 'ids' in {"),
    ("{{ job-scraping.job_ids.0.x }}", "{{ job-scraping.job_ids.0.x }} has no value: no 'x' in 11"),
    ("x {{ ai-analysis.score }}", "{{ ai-analysis.score }} has no value: no earlier check 'ai-analysis' answered"),
    ("{{ secrets.token }}", "{{ secrets.token }} is not among the check's secrets (password)"),
])
def test_a_reference_without_a_value_says_which_and_why(template: str, why: str) -> None:
    with pytest.raises(LookupError) as caught:
        fill({"outer": [template]}, ANSWERS, SECRETS)
    assert str(caught.value).startswith(why)


def test_a_long_answer_is_shortened_in_the_message() -> None:
    with pytest.raises(LookupError) as caught:
        at({"job_ids": list(range(1000))}, "nothing")
    assert len(str(caught.value)) < 100


ANSWER = {"items": [{"title": "release check", "id": 41}], "count": 1, "token_type": "bearer", "tags": ["a", "b"]}


@pytest.mark.parametrize(("expectation", "problem"), [
    ({"at": "token_type", "equals": "bearer"}, None),
    ({"at": "count", "equals": 1}, None),
    ({"at": "count", "equals": 2}, "count is 1, expected 2"),
    ({"at": "items.0.title", "contains": "release"}, None),
    ({"at": "tags", "contains": "b"}, None),
    ({"at": "", "contains": "items"}, None),  # a key of the whole answer
    ({"at": "tags", "contains": "c"}, "tags (['a', 'b']) does not contain 'c'"),
    ({"at": "items.0.id", "matches": r"^\d+$"}, None),
    ({"at": "items.0.title", "matches": "^check"}, "items.0.title ('release check') does not match '^check'"),
    ({"at": "items.3.title", "equals": "x"}, "items.3.title: no '3' in [{'title': 'release check', 'id': 41}]"),
    ({"at": "count", "equals": None}, "count is 1, expected None"),
])
def test_expectations_hold_the_answer_to_a_value_at_a_path(expectation: dict[str, Any], problem: str | None) -> None:
    assert unmet(Expectation(**expectation), ANSWER) == problem


@pytest.mark.parametrize(("check", "refused"), [
    ({"expect": [{"at": "x"}]}, "give exactly one of equals, contains or matches"),
    ({"expect": [{"at": "x", "equals": 1, "matches": "1"}]}, "give exactly one of equals, contains or matches"),
    ({"expect": [{"at": "x", "matches": "("}]}, "is not a valid regular expression"),
    ({"json": {"a": 1}, "form": {"a": "1"}}, "give json or form, not both"),
    ({"name": "secrets"}, '"secrets" is taken'),
    ({"name": "Login"}, "lowercase letters, digits and dashes"),
    ({"secrets": {"password": "hunter2"}}, "secrets"),
])
def test_a_check_that_cannot_be_run_as_written_is_refused(check: dict[str, Any], refused: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CriticalPathCheck(**{"name": "login", "path": "/login", **check})
    assert refused in str(caught.value)


@pytest.mark.parametrize(("method", "read_only", "only_reads"), [
    ("GET", None, True), ("HEAD", None, True), ("POST", None, False), ("DELETE", None, False),
    ("POST", True, True), ("GET", False, False)])
def test_a_check_only_reads_by_its_method_unless_it_says(method: str, read_only: bool | None, only_reads: bool) -> None:
    assert CriticalPathCheck(name="c", path="/", method=method, read_only=read_only).only_reads is only_reads


# --- against a real server ---------------------------------------------------------------------------

PASSWORD = "s3cret-login-pass"


class Api(BaseHTTPRequestHandler):
    """An API of the common shape: an OAuth2 password login (a form post) that answers a bearer token
    and sets a session cookie; items behind the token; PATCH and DELETE."""

    items: dict[int, dict[str, Any]] = {}
    slow = 0.0

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        return (self.headers.get("Authorization") == "Bearer tok-abc"
                and "session=s1" in (self.headers.get("Cookie") or ""))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/login/access-token":
            form = parse_qs(self._body().decode())
            if form.get("username") != ["check@example.com"] or form.get("password") != [PASSWORD]:
                return self._answer(400, {"detail": "Incorrect email or password"})
            return self._answer(200, {"access_token": "tok-abc", "token_type": "bearer"},
                                {"Set-Cookie": "session=s1; Path=/"})
        if url.path == "/items/" and self._authorized():
            item = {"id": len(Api.items) + 1, **json.loads(self._body())}
            Api.items[item["id"]] = item
            return self._answer(201, item)
        self._answer(401, {"detail": "Not authenticated"})

    def do_GET(self) -> None:
        time.sleep(Api.slow)
        url = urlsplit(self.path)
        if url.path == "/users/me" and self._authorized():
            return self._answer(200, {"email": "check@example.com", "is_active": True})
        if url.path == "/items/" and self._authorized():
            limit = int(parse_qs(url.query).get("limit", ["100"])[0])
            return self._answer(200, {"data": list(Api.items.values())[:limit], "count": len(Api.items)})
        self._answer(401, {"detail": "Not authenticated"})

    def do_PATCH(self) -> None:
        item_id = int(urlsplit(self.path).path.rstrip("/").rsplit("/", 1)[1])
        if self._authorized() and item_id in Api.items:
            Api.items[item_id].update(json.loads(self._body()))
            return self._answer(200, Api.items[item_id])
        self._answer(404, {"detail": "Not found"})

    def do_DELETE(self) -> None:
        item_id = int(urlsplit(self.path).path.rstrip("/").rsplit("/", 1)[1])
        if self._authorized() and Api.items.pop(item_id, None) is not None:
            return self._answer(200, {"message": "Item deleted successfully"})
        self._answer(404, {"detail": "Not found"})

    def log_message(self, *args: Any) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a slow answer (the timeout test) has hung up: no traceback for it."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def api() -> Iterator[str]:
    Api.items, Api.slow = {}, 0.0
    (port,) = free_ports(1)
    server = QuietServer(("127.0.0.1", port), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def smoke_test() -> list[CriticalPathCheck]:
    bearer = {"Authorization": "Bearer {{ login.access_token }}"}
    return [
        CriticalPathCheck(name="login", method="POST", path="/login/access-token",
                          form={"username": "check@example.com", "password": "{{ secrets.password }}"},
                          secrets={"password": {"env": "CHECK_PASSWORD"}},
                          expect=[Expectation(at="token_type", equals="bearer")]),
        CriticalPathCheck(name="me", path="/users/me", headers=bearer,
                          expect=[Expectation(at="email", matches="@example\\.com$")]),
        CriticalPathCheck(name="create-item", method="POST", path="/items/", headers=bearer,
                          json={"title": "release check"}, expect_status=201, expect_keys=["id"]),
        CriticalPathCheck(name="rename-item", method="PATCH", path="/items/{{ create-item.id }}", headers=bearer,
                          json={"title": "release check, renamed"},
                          expect=[Expectation(at="title", contains="renamed")]),
        CriticalPathCheck(name="list-items", path="/items/", query={"limit": "10"}, headers=bearer,
                          expect=[Expectation(at="data.0.id", equals="{{ create-item.id }}"), Expectation(at="count", equals=1)],
                          budget_seconds=2),
        CriticalPathCheck(name="delete-item", method="DELETE", path="/items/{{ create-item.id }}", headers=bearer),
    ]


def test_a_form_login_then_its_token_and_cookie_on_the_endpoints_behind_it(api: str) -> None:
    register_secret(PASSWORD)  # as check_secrets does when it resolves the source
    results = run_checks(api, smoke_test(), 5.0, secrets={"login": {"password": PASSWORD}})
    assert [(r.name, r.ok) for r in results] == [
        ("login", True), ("me", True), ("create-item", True), ("rename-item", True), ("list-items", True),
        ("delete-item", True)], [r.detail for r in results]
    assert results[3].detail.startswith("PATCH /items/1 HTTP 200 in ")  # the path names the id it was filled with
    assert Api.items == {}, "the item the checks made is gone again"


def test_a_wrong_password_fails_the_login_and_every_check_that_needs_its_token_without_showing_it(api: str) -> None:
    register_secret("not-the-password")
    results = run_checks(api, smoke_test()[:2], 5.0, secrets={"login": {"password": "not-the-password"}})
    assert results[0].detail == ('POST /login/access-token answered HTTP 400, expected 200: '
                                 '{"detail": "Incorrect email or password"}')
    assert results[1].detail == ("GET /users/me not run: {{ login.access_token }} has no value: no earlier check "
                                 "'login' answered")
    assert all("not-the-password" not in r.detail for r in results)


def test_the_token_an_answer_gave_is_masked_once_it_is_sent(api: str) -> None:
    run_checks(api, smoke_test()[:2], 5.0, secrets={"login": {"password": PASSWORD}})
    assert "tok-abc" not in redact("Authorization: Bearer tok-abc")


def test_an_answer_later_than_its_budget_fails_the_check(api: str) -> None:
    Api.slow = 0.6
    check = CriticalPathCheck(name="me", path="/users/me", budget_seconds=0.3, expect_status=401)
    (result,) = run_checks(api, [check], 5.0)
    assert not result.ok and result.detail == "GET /users/me did not answer within its budget of 0.3 s"
