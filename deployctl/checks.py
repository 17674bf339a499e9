"""`deployctl check ENV`: what an environment file points at, checked without changing anything."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy.engine import make_url

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError, ServiceError
from deployments.secrets import resolve_app_environment, resolve_database_url
from tasks.app_commands import app_command
from tasks.health import probe
from tasks.migration_lint import squawk_program, squawk_version, unknown_rules
from tasks.migrations import database_revision, live_database_elsewhere, migration_status
from tasks.fleet import fleet_problems
from tasks.monitoring import MetricsUnavailable, metrics_url, scrape_app
from tasks.process_state import running_pid
from tasks.release_environments import live_environment, release_environment
from tasks.processes import Advice, run
from tasks.served_version import served_version
from tasks.smoke import check_secrets, run_checks
from tasks.source import branch_head, current_sha


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # passed, with something the operator should know


class _Warn(Exception):
    """A check that passes with a caveat."""


def check_environment(config: EnvironmentConfig) -> list[CheckResult]:
    """Each check runs even when an earlier one failed, so one run shows every problem."""
    app_env: dict[str, str] = {}

    def secrets() -> str:
        app_env.update(resolve_app_environment(config))
        names = [*config.service.secrets, *config.database.variables]
        return f"resolved {', '.join(names)} (values not shown)"

    def repository() -> str:
        _must_exist(config.source.workspace)
        sha = branch_head(config)
        if sha is None:
            raise _Fail(f"{config.source.repository} has no branch {config.source.branch!r}")
        return f"{config.source.branch} at {sha[:12]} in {config.source.repository}"

    def workspace() -> str:
        _must_exist(config.source.workspace)
        return f"{config.source.workspace} at {current_sha(config.source.workspace)[:12]}"

    def interpreter() -> str:
        if not os.access(config.service.python, os.X_OK):
            if config.dependencies is not None:
                raise _Fail(f"no live environment in {config.dependencies.directory} yet: "
                            f"`deployctl dependencies {config.name}` builds the workspace's release's and makes it live")
            raise _Fail(f"{config.service.python} is not an executable; set service.python")
        return str(config.service.python)

    def dependencies() -> str:
        if config.dependencies is None:
            return f"no [dependencies]: every release runs in {config.service.python} as it is"
        live, wanted = live_environment(config), release_environment(config, config.app_dir())
        if live is None or not live.complete:
            raise _Fail(f"no live environment in {config.dependencies.directory}: `deployctl dependencies "
                        f"{config.name}` builds the workspace's release's and makes it live")
        if live.key != wanted.key:
            raise _Fail(f"current links {live.key}, but the workspace's {', '.join(config.dependencies.files)} key "
                        f"{wanted.key}: `deployctl dependencies {config.name} --activate` builds it and makes it live")
        built = live.facts().get("built_at", "?")
        return f"live environment {live.key} matches the workspace's {', '.join(config.dependencies.files)} (built {built})"

    def rollback_order() -> str:
        if config.service.maintenance_on_command:
            return "maintenance mode stops traffic while a rollback undoes the database"
        raise _Warn("no service.maintenance_on_command: a rollback cannot stop traffic, so it reverts the code "
                    "before it undoes an expand-only migration, and a destructive one's downgrade meets live "
                    "traffic; give the app a maintenance mode if it has one")

    def process() -> str:
        if config.fleet is not None:  # the hosts' processes are on their hosts: asked over the network
            problems = fleet_problems(config, None, "check")
            if problems:
                raise _Fail("; ".join(problems))
            return (f"{len(config.fleet.hosts)} hosts healthy, each in the rotation of "
                    f"{config.fleet.load_balancer.kind} backend {config.fleet.load_balancer.backend}")
        pid = running_pid(config)
        if pid is None:
            raise _Fail(f"no live process in {config.service.pid_file}; start the app or fix service.pid_file")
        return f"pid {pid}"

    def health() -> str:
        answer = probe(config.service.base_url + config.health.api_path, config.health.timeout_seconds)
        if not answer.ok:
            raise _Fail(answer.describe())
        return f"{answer.url} ok, {served_version(config, answer.body, 'check health').describe('serves')}"

    def database() -> str:
        if not app_env:
            raise _Fail("skipped: the database URL did not resolve")
        url = resolve_database_url(config)
        revision = database_revision(url)
        return f"{make_url(url).get_backend_name()} at revision {revision or '(none)'}"

    def backups() -> str:
        target = config.backups.directory
        existing = next(path for path in (target, *target.parents) if path.exists())  # the step makes the rest
        if not os.access(existing, os.W_OK):
            raise _Fail(f"{target} is not writable" if existing == target else
                        f"{target} cannot be made: {existing} is not writable")
        url = resolve_database_url(config) if app_env else ""
        if url.startswith("postgresql"):
            for tool in (config.backups.pg_dump, config.backups.pg_restore):
                if shutil.which(tool) is None:
                    raise _Fail(f"{tool} is not on PATH; install the PostgreSQL client tools")
        return f"{target} writable"

    def app_imports() -> str:
        if not config.service.preflight_command:
            return "no service.preflight_command to try (a release that cannot import is found by its canary)"
        _must_exist(config.app_dir())
        result = run(app_command(config, config.service.preflight_command, app_env or resolve_app_environment(config),
                                 timeout=120), step="check app", error=ServiceError,
                     advice=Advice(start="check service.preflight_command and service.python",
                                   slow="the app took over 120 s to import; look at what it does at import"))
        if not result.ok:
            raise _Fail(f"service.preflight_command failed in {config.app_dir()}: {result.error_line()}")
        return f"service.preflight_command passed in {config.app_dir()}"

    def migrations() -> str:
        """Alembic finds the scripts where the deploy will run it, and the live revision is one it knows."""
        _must_exist(config.app_dir())
        ini = config.app_dir() / config.database.alembic_config
        if not ini.is_file():
            raise _Fail(f"{ini} does not exist: set source.app_directory to the directory of the app's alembic.ini "
                        "within its repository (or database.alembic_config to its path there)")
        url = resolve_database_url(config)
        current = database_revision(url)
        status = migration_status(config, app_env or resolve_app_environment(config), config.source.workspace, current)
        if not status.known:
            raise _Fail(f"the database is at {current}, a revision the workspace's migrations do not know")
        if len(status.heads) != 1:
            raise _Fail(f"{len(status.heads)} migration heads ({', '.join(status.heads)}): merge them")
        pending = f", {len(status.pending)} pending" if status.pending else ", nothing pending"
        return f"alembic finds its scripts in {config.app_dir()}: head {status.heads[0]}{pending}"

    def migration_lint() -> str:
        """The linter the prerequisites run is there, and the policy names only rules it knows."""
        policy = config.migrations
        budget = (f"; revisions may hold a write-blocking lock {policy.max_lock_seconds:g} s at most"
                  if policy.max_lock_seconds else "; no lock budget (migrations.max_lock_seconds)")
        if not policy.lint:
            return "off (migrations.lint = false): the kinds are still read" + budget
        program = squawk_program(policy.squawk)
        if program is None:
            raise _Fail(f"squawk ({policy.squawk}) is not installed: `make install` brings it, or set migrations.squawk")
        unknown_rules(config, program)
        blocks = f"blocks {', '.join(policy.block)}" if policy.block else "every finding warns (migrations.block is empty)"
        allowed = f", {len(policy.allow)} finding(s) allowed" if policy.allow else ""
        return f"{squawk_version(program)}: {blocks}{allowed}{budget}"

    def database_variables() -> str:
        url = resolve_database_url(config)
        found = live_database_elsewhere(config, app_env or resolve_app_environment(config), url)
        if found:
            raise _Fail(f"the rehearsal would be refused: {'; '.join(found)} lead to the live database; map them "
                        "in [database.app_variables]")
        given = ", ".join(f"{name} ({part})" for name, part in config.database.variables.items())
        return f"the app's database variables come from the URL alone: {given}"

    def metrics() -> str:
        if config.monitoring.source == "none":
            return "not measured (monitoring.source = \"none\"): the watch checks health only"
        if config.monitoring.source == "prometheus":
            return f"read from Prometheus at {config.monitoring.prometheus_url} (not probed here)"
        snapshot = scrape_app(config)
        where = metrics_url(config) if config.fleet is None else f"{config.monitoring.metrics_path} of every host"
        return (f"{where}: {snapshot.requests:.0f} requests counted, "
                f"{len(snapshot.buckets)} latency buckets")

    def critical_paths() -> str:
        """The paths that only read (GET, HEAD, OPTIONS, or marked read_only: a login, say) answer as
        expected, in their order; those that write are left to a deploy."""
        reads = [check for check in config.critical_paths if check.only_reads]
        if not reads:
            return "none that only read (GET, or read_only = true); the others run in a deploy"
        secrets = {check.name: check_secrets(config, check) for check in reads}
        results = run_checks(config.service.base_url, reads, config.health.timeout_seconds, secrets=secrets)
        failed = [f"{result.name}: {result.detail}" for result in results if not result.ok]
        if failed:
            raise _Fail("; ".join(failed))
        return f"{len(reads)} answered as expected: {', '.join(c.name for c in reads)}"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("secrets", secrets),
        ("source repository", repository),
        ("workspace", workspace),
        ("app interpreter", interpreter),
        ("dependencies", dependencies),
        ("app imports", app_imports),
        ("app process", process),
        ("health", health),
        ("database", database),
        ("database variables", database_variables),
        ("migrations", migrations),
        ("migration lint", migration_lint),
        ("metrics", metrics),
        ("critical paths", critical_paths),
        ("backups", backups),
        ("rollback order", rollback_order),
    ]
    results = []
    for name, check in checks:
        try:
            results.append(CheckResult(name, True, check()))
        except _Warn as exc:
            results.append(CheckResult(name, True, str(exc), warning=True))
        except (_Fail, DeployError, MetricsUnavailable, OSError) as exc:
            results.append(CheckResult(name, False, str(exc)))
    return results


class _Fail(Exception):
    pass


def _must_exist(directory: Path) -> None:
    if not directory.is_dir():
        raise _Fail(f"{directory} does not exist")
