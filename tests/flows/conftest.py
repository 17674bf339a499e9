"""Flow-level fixtures: one Prefect test server for the session, a fresh sandbox per test module."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sample_app import sandbox
from tests.conftest import free_ports


@dataclass
class Sandbox:
    root: Path
    db: str

    @property
    def environments(self) -> Path:
        return self.root / "environments"

    def edit(self, env: str, edit: Callable[[str], str]) -> None:
        path = self.environments / f"{env}.toml"
        path.write_text(edit(path.read_text()))

    def config(self, env: str):  # type: ignore[no-untyped-def]
        from deployments.config import load_environment

        return load_environment(env, self.environments)

    def sha(self, tag: str) -> str:
        import subprocess

        return subprocess.run(["git", "rev-parse", f"{tag}^{{commit}}"], cwd=self.root / "origin.git", check=True,
                              capture_output=True, text=True).stdout.strip()


def fast(text: str) -> str:
    """Environment file tuned for tests: short grace time and stability window, the release's tests
    skipped (tested apart), one gunicorn worker instead of two (each is a process that imports the
    app at every start, canary and reload; tests/tasks/test_reload.py covers several workers)."""
    text = text.replace("grace_seconds = 5", "grace_seconds = 1").replace("stable_seconds = 6", "stable_seconds = 2")
    text = text.replace("\nworkers = 2\n", "\nworkers = 1\n").replace('JOBAPP_WORKERS = "2"', 'JOBAPP_WORKERS = "1"')
    return re.sub(r"^test_command = .*$", "test_command = []", text, flags=re.M)


_templates: dict[str, Path] = {}


def sandbox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite sandbox built once per test process and never started: its origin, clones and migrated,
    seeded databases are copied into every SQLite sandbox of the process, which then only starts."""
    if "sqlite" not in _templates:
        root = tmp_path_factory.mktemp("sbx-template") / "sandbox"
        sandbox.up(root, db="sqlite", ports={"staging": 1, "production": 2}, log=lambda *_: None, start=False)
        _templates["sqlite"] = root
    return _templates["sqlite"]


def make_sandbox(tmp_path_factory: pytest.TempPathFactory, db: str = "sqlite",
                 root: Path | None = None, hosts: int = 0,
                 edit: Callable[[str], str] | None = None) -> Iterator[Sandbox]:
    """A sandbox of its own (production a fleet of `hosts`), its files tuned by `fast`, then `edit`."""
    root = root or tmp_path_factory.mktemp("sbx") / "sandbox"
    if db == "sqlite":
        shutil.copytree(sandbox_template(tmp_path_factory), root, symlinks=True)
    staging_port, production_port = free_ports(2)
    # Tuned as the files are written, before the apps start: a USR2 reload keeps the environment the
    # master started with, so JOBAPP_WORKERS edited afterwards would never take.
    sandbox.up(root, db=db, ports={"staging": staging_port, "production": production_port}, log=lambda *_: None,
               edit=lambda text: edit(fast(text)) if edit else fast(text), hosts=hosts)
    box = Sandbox(root, db)
    previous = os.environ.get("DEPLOY_ENVIRONMENTS_DIR")
    os.environ["DEPLOY_ENVIRONMENTS_DIR"] = str(box.environments)
    try:
        yield box
    finally:
        if previous is None:
            os.environ.pop("DEPLOY_ENVIRONMENTS_DIR", None)
        else:
            os.environ["DEPLOY_ENVIRONMENTS_DIR"] = previous
        sandbox.down(root, log=lambda *_: None)
        if db == "postgres":
            sandbox.drop_postgres_databases(root)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    yield from make_sandbox(tmp_path_factory)


class Approver(threading.Thread):
    """Answers the paused deploy run, one answer per pause, like approvers in the UI would."""

    def __init__(self, answers: list[dict[str, str]], timeout: float = 120) -> None:
        super().__init__(daemon=True)
        self.answers = list(answers)
        self.timeout = timeout
        self.given: list[dict[str, str]] = []

    def run(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
        from prefect.flow_runs import resume_flow_run

        deadline = time.monotonic() + self.timeout
        with get_client(sync_client=True) as client:
            while self.answers and time.monotonic() < deadline:
                paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
                if paused:
                    answer = self.answers.pop(0)
                    resume_flow_run(paused[0].id, run_input=answer)
                    self.given.append(answer)
                    time.sleep(1.0)
                time.sleep(0.3)


def approval(name: str, role: str, decision: str = "approve", comment: str = "") -> dict[str, str]:
    return {"approver": name, "role": role, "decision": decision, "comment": comment}


@pytest.fixture(scope="module")
def pg_box(tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str) -> Iterator[Sandbox]:
    yield from make_sandbox(tmp_path_factory, db="postgres")
