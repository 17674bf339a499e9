"""A local Prefect stack for the demo and the end-to-end tests: a server (its own PREFECT_HOME, SQLite or
PostgreSQL), the `deploy-pool` process work pool, every deployment of prefect.yaml, and its workers: one
for the `default` queue (deploys, rollbacks, watches) and, for an environment with [fleet], one per host
queue, standing in here for the worker each real host runs.

The server keeps concurrency leases on disk, so a restart while a deploy holds its lock cannot leak
the lock. Processes are started detached with pid files; `down` stops them by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx

from deployments.fleet import FleetConfig
from tasks.processes import Advice, Command, one_line, run, spawn
from tasks.process_state import is_alive as _alive

PROJECT_DIR = Path(__file__).resolve().parent.parent
POOL = "deploy-pool"
DEPLOY_QUEUE = "default"
HOST_ENTRYPOINT = "flows/host_release.py"


class StackError(RuntimeError):
    pass


TOOL_ADVICE = Advice(start="run `make install` again", slow="the machine may be overloaded; run it again")


@dataclass
class Stack:
    home: Path = PROJECT_DIR / ".state" / "prefect"
    port: int = 4200
    environments_dir: Path | None = None
    database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Tests' servers and workers end with the process that started them, even when it is killed.
    tied_to_caller: bool = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_UI_ENABLED": "true",
            "DEPLOY_PROJECT_DIR": str(PROJECT_DIR),
        })
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        if self.environments_dir is not None:
            env["DEPLOY_ENVIRONMENTS_DIR"] = str(self.environments_dir)
        env.update(self.extra_env)
        return env

    def environments(self) -> list[str]:
        """The environment files the worker will deploy with: one set of deployments each."""
        from deployments.config import available_environments, environments_dir

        directory = environments_dir(self.env())
        found = available_environments(directory)
        if not found:
            raise StackError(f"no environment file in {directory}: add one <name>.toml per environment "
                             "(see README.md, Environment files)")
        return found

    def _prefect(self) -> list[str]:
        return [sys.executable, "-m", "prefect"]

    def up(self, log=print) -> None:  # type: ignore[no-untyped-def]
        self.start_server()
        log(f"prefect server  {self.ui_url}")
        self.run([*self._prefect(), "work-pool", "create", POOL, "--type", "process", "--overwrite"])
        environments = self.environments()
        fleets = self.fleets(environments)
        rendered = self.home / "deployments.yaml"
        rendered.write_text(render_deployments(PROJECT_DIR / "prefect.yaml", environments,
                                               fleets={name: fleet.deploy_queue for name, fleet in fleets.items()}))
        self.run([*self._prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", str(rendered)], cwd=PROJECT_DIR)
        log(f"deployments     {', '.join(environments)}: every deployment of prefect.yaml for each")
        log(self.run([sys.executable, "-m", "deployctl.automations"]).strip())
        marker = self.home / "worker.environments"
        wanted = str(self.environments_dir or "")
        # On one machine (the sandbox, the tests) every fleet host's worker runs here too.
        workers = {"worker": DEPLOY_QUEUE} | {f"worker-{host.queue}": host.queue
                                              for fleet in fleets.values() for host in fleet.hosts}
        if not marker.exists() or marker.read_text() != wanted:
            # A worker started for other environment files would run every deploy against them.
            self._stop(*self._workers(), log=log)
        for name, queue in workers.items():
            if self._pid(name) is None:
                self._spawn(name, self.worker_argv(queue))
            log(f"{'worker':<15} pool {POOL}, queue {queue}, pid {self._pid(name)}")
        marker.write_text(wanted)

    def worker_argv(self, queue: str) -> list[str]:
        """A worker of the pool for one queue: `default` (the deploys, rollbacks and watches) or a fleet
        host's (its host-release runs). On real hosts each host runs its own, with the same argv."""
        return [*self._prefect(), "worker", "start", "--pool", POOL, "--type", "process", "--work-queue", queue,
                "--name", f"{POOL}-{queue}"]

    def fleets(self, environments: Sequence[str]) -> dict[str, FleetConfig]:
        """The [fleet] of each of these environments that has one."""
        from deployments.config import environments_dir, load_environment

        directory = environments_dir(self.env())
        found = {}
        for environment in environments:
            fleet = load_environment(environment, directory).fleet
            if fleet is not None:
                found[environment] = fleet
        return found

    def _workers(self) -> list[str]:
        return sorted(p.stem for p in self.home.glob("worker*.pid"))

    def start_server(self, timeout: float = 90) -> None:
        """The server alone (no pool, deployments or worker), unless it answers already."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.healthy():
            self._spawn("server", [*self._prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)])
            self._wait_healthy(timeout=timeout)

    def down(self, log=print) -> None:  # type: ignore[no-untyped-def]
        """The workers together (each may take its whole grace time), then the server they report to."""
        self._stop(*self._workers(), log=log)
        self._stop("server", log=log)

    def _stop(self, *names: str, log=print) -> None:  # type: ignore[no-untyped-def]
        """SIGTERM to each process group, then SIGKILL to those still up after a shared 20 s grace."""
        pids = {name: pid for name in names if (pid := self._pid(name)) is not None}
        for pid in pids.values():
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for name, pid in pids.items():
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.killpg(pid, signal.SIGKILL)
            (self.home / f"{name}.pid").unlink(missing_ok=True)
            log(f"stopped {name} (pid {pid})")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, argv: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
        result = run(Command.of(argv, cwd=cwd, env=self.env(), timeout=timeout), step=" ".join(argv[2:5]),
                     error=one_line(StackError), advice=TOOL_ADVICE)
        if not result.ok:
            raise StackError(f"{' '.join(argv[2:5])} failed:\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}")
        return result.stdout

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.home / f"{name}.log", "ab")
        process = spawn(Command.of(argv, cwd=PROJECT_DIR, env=self.env()), step=f"start {name}", error=one_line(StackError),
                        advice=TOOL_ADVICE, stdout=log, stderr=subprocess.STDOUT, new_session=True,
                        die_signal=signal.SIGTERM if self.tied_to_caller else None)
        (self.home / f"{name}.pid").write_text(str(process.pid))

    def _pid(self, name: str) -> int | None:
        try:
            pid = int((self.home / f"{name}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self._pid("server") is None:
                break
            time.sleep(0.5)
        raise StackError(f"the Prefect server did not come up on {self.api_url}; see {self.home / 'server.log'}")


def render_deployments(template: Path, environments: Sequence[str], fleets: Mapping[str, str] | None = None) -> str:
    """prefect.yaml with each of its deployments once per environment, `{environment}` filled in; the
    host-release one only for the environments in `fleets` (their files have [fleet]), whose other
    deployments go on the queue `fleets` names for them (their `deploy_host`'s; "" keeps the default)."""
    import yaml

    fleets = fleets or {}
    document = yaml.safe_load(template.read_text())
    document.pop("definitions", None)  # its anchors are resolved by the load
    rendered = []
    for environment in environments:
        for deployment in document["deployments"]:
            host_flow = deployment["entrypoint"].startswith(HOST_ENTRYPOINT)
            if host_flow and environment not in fleets:
                continue
            filled = _filled(deployment, environment)
            if not host_flow and fleets.get(environment):
                filled["work_pool"] = {**filled["work_pool"], "work_queue_name": fleets[environment]}
            rendered.append(filled)
    document["deployments"] = rendered
    return str(yaml.safe_dump(document, sort_keys=False, width=120))


def _filled(value: Any, environment: str) -> Any:
    if isinstance(value, str):
        return value.replace("{environment}", environment)
    if isinstance(value, list):
        return [_filled(item, environment) for item in value]
    if isinstance(value, dict):
        return {key: _filled(item, environment) for key, item in value.items()}
    return value
