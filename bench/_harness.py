"""What the deploy benchmarks share: a sandbox of their own, approvers who answer at once, a paced load, and a
scratch PostgreSQL database for a Prefect server.

Imported by the scripts in bench/ (which put the project root on sys.path), never run itself: its name
starts with `_`, so bench/run does not take it for a benchmark.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.conftest import free_ports

APPROVERS = (("Dana Whitfield", "team-lead"), ("Sam Okafor", "product-owner"))


def without_release_tests(environment_file: str) -> str:
    """The release's own test suite off: the same subprocess whether orchestrated or not, and it runs
    before anything in production changes."""
    return re.sub(r"^test_command = .*$", "test_command = []", environment_file, flags=re.M)


def bench_sandbox(root: Path, edit: Callable[[str], str] = without_release_tests) -> Path:
    """A fresh sandbox at `root` on free ports, each environment file passed through `edit`."""
    from sample_app import sandbox

    staging, production = free_ports(2)
    sandbox.up(root, ports={"staging": staging, "production": production}, log=lambda *_: None)
    for env in ("staging", "production"):
        path = root / "environments" / f"{env}.toml"
        path.write_text(edit(path.read_text()))
    return root


def approve_when_paused(count: int = len(APPROVERS)) -> threading.Thread:
    """Answers each pause of a deploy run as soon as it is seen (once per pause key), as the first
    `count` approvers would; gives up after five minutes."""
    def answer() -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
        from prefect.flow_runs import resume_flow_run

        pending = [{"approver": name, "role": role, "decision": "approve", "comment": "bench"}
                   for name, role in APPROVERS[:count]]
        answered: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 300
        with get_client(sync_client=True) as client:
            while pending and time.monotonic() < deadline:
                paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
                for run in paused:
                    key = (str(run.id), str(run.state.state_details.pause_key if run.state else ""))
                    if key not in answered:
                        answered.add(key)
                        resume_flow_run(run.id, run_input=pending.pop(0))
                        break
                time.sleep(0.1)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


# --- paced load, in a process of its own -------------------------------------------------------

Call = tuple[str, str, Any]  # method, path, JSON body


def _client_loop(base_url: str, calls: list[Call], interval: float, offset: float, stop: Any,
                 out: list[tuple[Any, ...]], lock: threading.Lock, user: str, agent: str) -> None:
    import httpx

    due = time.monotonic() + offset
    turn = 0
    with httpx.Client(base_url=base_url, timeout=10, follow_redirects=False,
                      headers={"X-User-Id": user, "User-Agent": agent}) as client:
        while not stop.is_set():
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            # Paced, never bursting to catch up: a slow answer lowers the rate, and the report says so.
            due = max(due + interval, time.monotonic())
            method, path, body = calls[turn % len(calls)]
            turn += 1
            sent = time.time()
            try:
                response = client.request(method, path, json=body)
                status, retry_after, error = response.status_code, response.headers.get("retry-after"), None
                text = response.text[:600] if status >= 500 else ""
            except httpx.HTTPError as exc:
                status, retry_after, error, text = None, None, f"{type(exc).__name__}: {exc}"[:200], ""
            with lock:
                out.append((sent, time.time(), method, path, status, retry_after, error, text))


def _run_load(base_url: str, rounds: list[list[Call]], rate: float, stop: Any, started: Any, result_file: str,
              agent: str) -> None:
    """Child process: one keep-alive client per list in `rounds`, together paced to `rate` requests/s."""
    records: list[tuple[Any, ...]] = []
    lock = threading.Lock()
    interval = len(rounds) / rate
    threads = [threading.Thread(target=_client_loop, daemon=True,
                                args=(base_url, calls, interval, interval * i / len(rounds), stop, records, lock,
                                      f"load-{i}", agent))
               for i, calls in enumerate(rounds)]
    for thread in threads:
        thread.start()
    started.set()
    for thread in threads:
        thread.join()
    Path(result_file).write_text(json.dumps(records))


class Load:
    """Paced requests from a process of their own (the measured run's CPU is not the load's), from a
    second before `Load(...)` returns to a second after `stop()`. Each request is one row: (sent, done,
    method, path, status, retry_after, error, text of a 5xx answer), sorted by when it was sent."""

    def __init__(self, base_url: str, rounds: list[list[Call]], rate: float, scratch: Path, agent: str = "bench") -> None:
        context = multiprocessing.get_context("spawn")
        self.stop_event = context.Event()
        started = context.Event()
        self.result_file = scratch / f"load-{time.monotonic_ns()}.json"
        self.process = context.Process(target=_run_load, args=(base_url, rounds, rate, self.stop_event, started,
                                                               str(self.result_file), agent), daemon=True)
        self.process.start()
        if not started.wait(60):
            self.process.kill()
            raise RuntimeError("the load process did not start within 60 s")
        time.sleep(1.0)  # a second of steady load before anything changes

    def stop(self) -> list[tuple[Any, ...]]:
        time.sleep(1.0)  # and a second after
        self.stop_event.set()
        self.process.join(60)
        if self.process.is_alive():
            self.process.kill()
        if not self.result_file.exists():
            raise RuntimeError("the load process ended without writing its requests")
        return sorted((tuple(row) for row in json.loads(self.result_file.read_text())), key=lambda row: row[0])


def prefect_server_database(cleanup: ExitStack) -> str | None:
    """A database for a bench's Prefect server: a scratch PostgreSQL database, as a fleet's server runs on
    (the README's "Deploying to several hosts"), dropped when `cleanup` closes; None (SQLite in the
    server's home) when PostgreSQL does not answer at DEPLOY_TEST_POSTGRES_URL, as the tests read it."""
    from sqlalchemy.engine import make_url

    from tests.conftest import POSTGRES_ADMIN_URL, _postgres_available, scratch_database

    problem = _postgres_available()
    if problem is not None:
        print(f"PostgreSQL does not answer ({problem}): the Prefect server runs on SQLite", flush=True)
        return None
    url = cleanup.enter_context(scratch_database(POSTGRES_ADMIN_URL, "bench_prefect"))
    print("Prefect server on PostgreSQL (a scratch database, dropped at the end)", flush=True)
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
