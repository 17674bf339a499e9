"""Environment files: what an environment is, validated before anything runs.

One TOML file per environment in the environments directory (`deployments/` by default, or the
directory named by `DEPLOY_ENVIRONMENTS_DIR`). The file names are the allowlist of environment
names: nothing builds a path from a name that is not one of them.

Secret values never appear in a file. A value that is secret is a *source*: `{ env = "NAME" }`
(the worker's environment, then the `env_files` the file lists) or `{ secret = "block-name" }`
(a Prefect Secret block). `deployments.secrets` resolves them at the moment they are needed.

Relative paths in a file are relative to the file's own directory.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from deployments.config_base import FilePath, Model, _relative_to_file
from deployments.errors import ConfigError, InvalidInput
from deployments.fleet import FleetConfig, HostConfig

ENVIRONMENTS_DIR_VARIABLE = "DEPLOY_ENVIRONMENTS_DIR"
DEFAULT_ENVIRONMENTS_DIR = Path(__file__).resolve().parent
ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
APPROVER_ROLES = ("team-lead", "product-owner")



# What git takes for a remote rather than a path: scheme://..., or scp-like user@host:path.
REMOTE_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^[^/:]+@[^/:]+:")


def _repository_relative_to_file(value: str, info: ValidationInfo) -> str:
    """A repository given as a local path is relative to the file, like every path in it; a URL is kept."""
    if REMOTE_URL.match(value) or Path(value).is_absolute():
        return value
    return str(_relative_to_file(Path(value), info))


class ValueSource(Model):
    """Where a secret value comes from: exactly one of `env` or `secret`."""

    env: str | None = Field(None, description="environment variable holding the value")
    secret: str | None = Field(None, description="name of a Prefect Secret block holding the value")

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueSource:
        if (self.env is None) == (self.secret is None):
            raise ValueError('give exactly one of env = "VARIABLE" or secret = "block-name"')
        if self.env is not None and not ENV_VAR_NAME.fullmatch(self.env):
            raise ValueError(f"{self.env!r} is not an environment variable name")
        if self.secret is not None and not BLOCK_NAME.fullmatch(self.secret):
            raise ValueError(f"{self.secret!r} is not a block name (lowercase letters, digits, dashes)")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"Prefect Secret block {self.secret!r}"


class SourceConfig(Model):
    repository: Annotated[str, AfterValidator(_repository_relative_to_file)] = Field(
        description="the origin repository: a URL git can fetch, or a path (relative to this file)")
    branch: str = Field("main", description="releases must be merged to this branch")
    remote: str = "origin"
    workspace: FilePath = Field(description="the app's checkout that is deployed in place")
    app_directory: str = Field(".", description=(
        "where the app lives within the repository (a monorepo's `backend`): every app command, the "
        "migrations, the tests and the scan run there, in the workspace and in scratch trees alike"))

    @field_validator("app_directory")
    @classmethod
    def _inside_the_repository(cls, value: str) -> str:
        path = Path(value)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError("a path inside the repository, relative to its root, e.g. \"backend\"")
        return path.as_posix()


class CanaryConfig(Model):
    """The release started once more, beside production, before it takes production's traffic."""

    env: dict[str, str] = Field(
        default_factory=dict,
        description="variables on top of [service] env for the canary; `{port}` is a free loopback port and "
                    "`{scratch}` a directory of its own (its pid file, log, control socket, local files)",
    )
    start_command: list[str] = Field(default_factory=list, description="argv; default: service.start_command")
    url: str = Field("http://127.0.0.1:{port}", description="where the canary answers")
    critical_paths: bool = Field(True, description="run the [[critical_paths]] against it, not only health")
    timeout_seconds: float = Field(60.0, gt=0, le=600, description="for it to start answering /health")

    @field_validator("env")
    @classmethod
    def _port_placeholder(cls, value: dict[str, str]) -> dict[str, str]:
        if not any("{port}" in v for v in value.values()):
            raise ValueError("one variable must bind the canary to `{port}`, e.g. BIND = \"127.0.0.1:{port}\"; "
                             "a canary on production's own port would take its traffic")
        return value


class ServiceConfig(Model):
    base_url: str = Field(description="where the app answers, e.g. http://127.0.0.1:8102")
    python: FilePath = Field(description="the app's own interpreter; its tests and migrations run with it")
    start_command: list[str] = Field(description="argv that starts the app in the workspace, detached")
    reload: Literal["usr2", "hup", "command"] = Field(
        "usr2", description="usr2: start a new master, retire the old one once it serves; hup: reload in place"
    )
    reload_command: list[str] | None = None
    pid_file: FilePath
    startup_log: FilePath
    error_patterns: list[str] = [r"Traceback \(most recent call last\)", "Worker failed to boot", "CRITICAL"]
    grace_seconds: float = Field(10.0, ge=0, le=600)
    env: dict[str, str] = Field(default_factory=dict, description="plain (non-secret) variables of the app")
    secrets: dict[str, ValueSource] = Field(default_factory=dict, description="app variable -> secret source")
    required_env: list[str] = Field(default_factory=list, description="variables the app must be given")
    workers: int = Field(1, ge=1, le=64, description="worker processes; a reload waits for this many")
    maintenance_on_command: list[str] = Field(
        default_factory=list, description="argv that stops traffic (maintenance mode) during a rollback"
    )
    maintenance_off_command: list[str] = Field(default_factory=list, description="argv that resumes traffic")
    preflight_command: list[str] = Field(
        default_factory=list, description="argv run in the workspace before a reload, e.g. an import test"
    )
    canary: CanaryConfig | None = Field(None, description="check the release on a canary before the reload")

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+", value):
            raise ValueError("use scheme://host:port with no path, e.g. http://127.0.0.1:8102")
        return value

    @field_validator("error_patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _reload_command(self) -> ServiceConfig:
        if self.reload == "command" and not self.reload_command:
            raise ValueError('reload = "command" needs reload_command = ["argv", ...]')
        return self


URL_PARTS = ("url", "host", "port", "user", "password", "name")
UrlPart = Literal["url", "host", "port", "user", "password", "name"]


class DatabaseConfig(Model):
    """Where the database is (`url`, for the tool) and how the app is told (its variables).

    An app that reads one URL: `app_variable = "DATABASE_URL"` (the default). An app that builds its
    connection from parts: `[database.app_variables]` maps each of its variables to a part of the URL
    (url, host, port, user, password, name), e.g. `POSTGRES_SERVER = "host"`. The tool derives every
    one of them from the URL it means — the live database, or the scratch copy the rehearsal migrates —
    so no variable can keep pointing the rehearsal at the live database.
    """

    url: ValueSource = Field(description="the database URL; never written in the file")
    app_variable: str = Field("DATABASE_URL", description="the app's variable the URL is passed in")
    app_variables: dict[str, UrlPart] = Field(default_factory=dict, description=(
        "the app's variables, each given one part of the URL (replaces app_variable)"))
    alembic_config: str = "alembic.ini"
    lock_timeout_ms: int = Field(5_000, ge=100)
    statement_timeout_ms: int = Field(600_000, ge=1_000)

    @field_validator("app_variables")
    @classmethod
    def _names_the_database(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not ENV_VAR_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(bad)}")
        if value and not {"url", "name"} & set(value.values()):
            raise ValueError("map a variable to \"name\" (the database's name) or to \"url\": without one the "
                             "app cannot be pointed at a copy of the database")
        return value

    @property
    def variables(self) -> dict[str, str]:
        """Every variable the app receives from the URL, with the part it holds."""
        return dict(self.app_variables) or {self.app_variable: "url"}


# squawk's rules on style rather than on what a migration does to a running app: not shown unless asked.
STYLE_RULES = ("prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-identity", "prefer-text-field",
               "prefer-timestamp-tz", "prefer-robust-stmts", "ban-char-field")


class LintAllowance(Model):
    revision: str = Field(min_length=1, description="the alembic revision")
    rule: str = Field(min_length=1, description="the squawk rule, e.g. ban-drop-column")
    reason: str = Field(min_length=3, description="why it is safe here; shown to the approvers")


class MigrationSafetyConfig(Model):
    """[migrations]: what the prerequisites check in a release's migrations before anyone approves them.

    Each pending revision is written out as SQL (Alembic's offline mode, in the app's interpreter) and
    checked by squawk; its findings warn, or block when their rule is in `block`, unless an [[migrations.allow]]
    entry names the revision and the rule with a reason. The rehearsal on a copy of the database measures
    each revision's locks; `max_lock_seconds` is the longest a revision may hold one that blocks writes."""

    lint: bool = Field(True, description="lint the pending migrations with squawk")
    block: list[str] = Field(default_factory=list, description=(
        'squawk rules whose findings fail the prerequisite, e.g. ["ban-drop-column", "changing-column-type"]'))
    ignore: list[str] = Field(default_factory=lambda: list(STYLE_RULES), description=(
        "squawk rules not reported at all (by default its rules on style)"))
    allow: list[LintAllowance] = Field(default_factory=list, description=(
        "findings accepted for one revision and rule, with the reason approvers read"))
    max_lock_seconds: float | None = Field(None, gt=0, le=3600, description=(
        "the longest a revision may hold a lock that blocks writes (SHARE or stronger; SQLite: the database's "
        "write lock), as measured on the rehearsal's copy; a longer one fails the prerequisite"))
    squawk: str = Field("squawk", description="the squawk program (the one installed beside the tool by default)")

    @model_validator(mode="after")
    def _blocked_rules_are_reported(self) -> MigrationSafetyConfig:
        both = sorted(set(self.block) & set(self.ignore))
        if both:
            raise ValueError(f"{', '.join(both)} in both block and ignore: an ignored rule can never block; "
                             "remove it from one of them")
        return self


class BackupConfig(Model):
    directory: FilePath
    keep: int = Field(10, ge=1)
    pg_dump: str = "pg_dump"
    pg_restore: str = "pg_restore"
    sqlite_check: Literal["quick", "integrity"] = Field(
        "quick", description="how a SQLite copy is checked: quick_check reads every page and b-tree of the copy "
                             "(O(N)); integrity_check also looks every index entry up against its row "
                             "(O(N log N), about twice the copy's time)",
    )
    pg_dump_compression: int = Field(
        1, ge=0, le=9, description="gzip level of PostgreSQL archives: 1 costs a third of the default 6's CPU "
                                   "for an archive about a fifth larger, and keeps the restore that proves "
                                   "each backup alongside the dump instead of behind it (bench/backups.py)",
    )


class DependenciesConfig(Model):
    """Each release's own Python environment, so a release that changes its requirements runs (tests,
    rehearsal, canary, migrations, the app) with exactly its own packages, and a rollback returns to
    exactly the previous release's. `<directory>/<key>` is one environment, keyed by the contents of
    `files` with the install command, its variables and `python`: a release that changes none of them
    reuses its predecessor's. `<directory>/current` links the live one; the app's interpreter is
    `<directory>/current/bin/python`, which `service.python` becomes."""

    directory: FilePath = Field(description="where the environments live, one directory per environment file")
    python: FilePath = Field(description="the interpreter each environment is created from (`python -m venv`)")
    venv_options: list[str] = Field(default_factory=list, description=(
        'options of `python -m venv`, e.g. ["--without-pip"] when the install brings its own installer '
        "(uv, or `pip --python {python}`)"))
    files: list[str] = Field(["requirements.txt"], min_length=1, description=(
        "the dependency files, in the app's directory; their contents key the environment"))
    install_command: list[str] = Field(["{python}", "-m", "pip", "install", "-r", "requirements.txt"], min_length=1,
                                       description="argv run in the release's app directory; `{python}` is the "
                                                   "new environment's interpreter")
    check_command: list[str] = Field(["{python}", "-m", "pip", "check"], description=(
        "argv that proves the installed environment consistent; empty: none"))
    env: dict[str, str] = Field(default_factory=dict, description=(
        "plain variables of the install command only (e.g. PIP_INDEX_URL, PIP_FIND_LINKS); it gets no "
        "variable of the app"))
    keep: int | None = Field(None, ge=1, le=100, description=(
        "the newest environments kept (default: backups.keep, as many as there are backups to go back to); "
        "the live one and the one a rollback would return to are never removed"))
    timeout_seconds: float = Field(900.0, gt=0, le=7200, description="for one install")

    @field_validator("files")
    @classmethod
    def _inside_the_app(cls, value: list[str]) -> list[str]:
        for name in value:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"{name!r}: a path in the app's directory, e.g. \"requirements.txt\"")
        return value


class HealthConfig(Model):
    path: str = "/health"
    api_path: str = "/api/health"
    timeout_seconds: float = Field(5.0, gt=0, le=120)
    deadline_seconds: float = Field(60.0, gt=0, le=3600)
    check_version: bool = Field(True, description="require /api/health to report the deployed SHA")
    stable_checks: int = Field(3, ge=1, le=1000, description="after a reload, health must pass this many "
                               "consecutive checks (one a second at most) ...")
    stable_seconds: float = Field(10.0, ge=0, le=3600, description="... spanning at least this long; a failure "
                                  "after the first good check fails the step: a release that flaps is not healthy")
    required_services: list[str] = ["database", "scraper", "ai", "documents", "email"]
    version_command: list[str] = Field(default_factory=list, description=(
        "check_version = false: argv run in the app's directory with its environment; the first line it "
        "prints is the SHA the app serves (7 hex digits or more)"))
    version_file: str | None = Field(None, description=(
        "check_version = false: a file in the app's directory holding the SHA the app serves, e.g. written "
        "by the app as it starts"))

    @model_validator(mode="after")
    def _one_version_source(self) -> HealthConfig:
        if self.check_version and (self.version_command or self.version_file):
            raise ValueError("version_command and version_file are read only with check_version = false (the "
                             "health answer says the version otherwise): set check_version = false, or remove them")
        if self.version_command and self.version_file:
            raise ValueError("give version_command or version_file, not both")
        if self.version_file and (Path(self.version_file).is_absolute() or ".." in Path(self.version_file).parts):
            raise ValueError("version_file is a path inside the app's directory, e.g. \"run/served-sha\"")
        return self


class Expectation(Model):
    """A value the answer must hold at `at` (a JSON path: `items.0.title`; empty: the whole answer)."""

    at: str = Field("", description="where in the JSON answer: keys and list indices joined by dots")
    equals: Any = Field(None, description="the value itself (a number, a string, true, ...)")
    contains: Any = Field(None, description="a substring of a string, an element of a list, a key of an object")
    matches: str | None = Field(None, description="a regular expression the value (as text) must match")

    @model_validator(mode="after")
    def _exactly_one(self) -> Expectation:
        given = [name for name in ("equals", "contains", "matches") if name in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of equals, contains or matches")
        if self.matches is not None:
            try:
                re.compile(self.matches)
            except re.error as exc:
                raise ValueError(f"{self.matches!r} is not a valid regular expression: {exc}") from exc
        return self


READ_ONLY_METHODS = ("GET", "HEAD", "OPTIONS")


class CriticalPathCheck(Model):
    """One request of the critical-path tests, and what its answer must be. Any string in `path`,
    `query`, `headers`, `json` or `form` may hold `{{ earlier-check.key.0 }}` (a value from an earlier
    check's JSON answer) or `{{ secrets.NAME }}` (a value from this check's `secrets`, never written in
    the file and masked everywhere). Cookies an answer sets are sent with the later checks."""

    name: str
    method: Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str
    query: dict[str, str] = Field(default_factory=dict, description="query parameters")
    headers: dict[str, str] = Field(default_factory=dict, description='e.g. Authorization = "Bearer {{ login.access_token }}"')
    json_body: Any = Field(
        None,
        alias="json",
        description='JSON request body; "{{ other-check.key.0 }}" takes a value from an earlier check\'s answer',
    )
    form: dict[str, str] | None = Field(None, description="a form body (application/x-www-form-urlencoded), e.g. "
                                                          "an OAuth2 password login")
    secrets: dict[str, ValueSource] = Field(default_factory=dict, description=(
        "values this check uses as {{ secrets.NAME }}: { env = ... } or { secret = ... }"))
    expect_status: int = 200
    expect_keys: list[str] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list, description="values the answer must hold")
    budget_seconds: float | None = Field(None, gt=0, le=600, description="the answer must come within this")
    read_only: bool | None = Field(None, description=(
        "it changes nothing, so `deployctl check` may run it; default: true for GET, HEAD and OPTIONS"))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,59}", value) or value == "secrets":
            raise ValueError("lowercase letters, digits and dashes (a later check names it in {{ name.key }}); "
                             "\"secrets\" is taken")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a path starts with /, e.g. /api/scrape")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> CriticalPathCheck:
        if self.json_body is not None and self.form is not None:
            raise ValueError("give json or form, not both")
        return self

    @property
    def only_reads(self) -> bool:
        return self.read_only if self.read_only is not None else self.method in READ_ONLY_METHODS


class MonitoringConfig(Model):
    source: Literal["app", "prometheus", "none"] = Field("app", description=(
        'where the error rate and response time come from; "none": the app publishes no metrics, and they '
        "are reported as not measured (the watch checks health only)"))
    metrics_path: str = "/metrics"
    requests_metric: str = Field("http_requests_total", description="counter with route and status labels")
    latency_metric: str = Field("http_request_duration_seconds", description="histogram of request durations")
    users_metric: str = Field("active_users", description="gauge of active users")
    prometheus_url: str | None = Field(None, description='source = "prometheus": its address, e.g. http://127.0.0.1:9090')
    selector: str = Field("", description='label matchers of this environment\'s series, e.g. job="jobapp-production"')
    query_window: str = Field("2m", pattern=r"^[0-9]+[smh]$", description="range of rate() in the default queries")
    queries: dict[Literal["requests", "error_rate", "p95_seconds", "active_users"], str] = Field(
        default_factory=dict, description="PromQL overriding the default query of each figure")
    max_error_rate: float = Field(0.02, ge=0, le=1)
    max_p95_seconds: float = Field(1.0, gt=0)
    max_p95_regression: float = Field(2.0, ge=1, description="allowed p95 as a multiple of the baseline")

    @model_validator(mode="after")
    def _prometheus(self) -> MonitoringConfig:
        if self.source == "prometheus" and not self.prometheus_url:
            raise ValueError('source = "prometheus" needs prometheus_url = "http://host:9090"')
        return self


class ApprovalConfig(Model):
    required_roles: list[Literal["team-lead", "product-owner"]] = Field(default_factory=list)
    timeout_seconds: int = Field(3600, ge=10, le=7 * 24 * 3600)


class NotificationConfig(Model):
    blocks: list[str] = Field(default_factory=list, description="Prefect notification block names")


class WatchConfig(Model):
    enabled: bool = Field(True, description="watch every release that changed something")
    duration_seconds: int = Field(7200, ge=10, description="how long after the deploy (runbook: 2 hours)")
    interval_seconds: int = Field(60, ge=1, description="one sample of health and metrics per interval")
    breach_ticks: int = Field(3, ge=1, description="consecutive bad samples that make a critical alert")
    auto_rollback: bool = Field(True, description="a critical alert rolls back the release if it is still live")
    min_requests: int = Field(10, ge=0, description="a sample with fewer requests does not judge error rate or p95")
    min_activity_ratio: float = Field(
        0.0, ge=0, le=1, description="alert when active users fall below this share of the pre-deploy figure")

    @model_validator(mode="after")
    def _ticks(self) -> WatchConfig:
        if self.interval_seconds * self.breach_ticks > self.duration_seconds:
            raise ValueError("interval_seconds * breach_ticks is longer than duration_seconds: no breach could "
                             "ever be confirmed; shorten the interval or lengthen the watch")
        return self


class RollbackConfig(Model):
    automatic: bool = Field(True, description="a deploy that failed after changing something rolls back")
    lock_wait_seconds: int = Field(
        150, ge=0, le=3600, description="how long a rollback waits for the lock a dead deploy still holds"
    )
    verify_critical_paths: bool = True
    decision_timeout_seconds: int = Field(3600, ge=10, le=7 * 24 * 3600, description=(
        "how long an automatic rollback waits for a decision when restoring the backup would discard data "
        "written since it was taken; no answer leaves maintenance on and restores nothing"))


class MetricsConfig(Model):
    """The orchestrator's own metrics: pushed to a Pushgateway when one is named, else a node-exporter textfile."""

    pushgateway_url: str | ValueSource | None = Field(
        None, description="Pushgateway to push to, e.g. http://127.0.0.1:9091, or { env = ... } for a URL with "
                          "credentials; unset: write a textfile instead"
    )
    textfile_directory: FilePath | None = Field(
        None, description="node-exporter textfile collector directory; default <state_dir>/metrics"
    )
    job: str = Field("production_deployment", min_length=1, max_length=100,
                     description="the job label of the group pushed to the Pushgateway")
    success_target: float = Field(0.95, gt=0, le=1, description="the runbook's target share of successful deploys")

    @field_validator("pushgateway_url")
    @classmethod
    def _gateway_url(cls, value: str | ValueSource | None) -> str | ValueSource | None:
        if not isinstance(value, str):
            return value
        if "@" in value.partition("://")[2].partition("/")[0]:
            raise ValueError('credentials are never written in an environment file: set the URL in a variable and '
                             'write pushgateway_url = { env = "PUSHGATEWAY_URL" } (or { secret = "block-name" })')
        # No query string: the client appends /metrics/job/... to the URL as given.
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value):
            raise ValueError("use scheme://host:port, e.g. http://127.0.0.1:9091, or leave it out for a textfile")
        return value


class PrerequisiteConfig(Model):
    test_command: list[str] = Field(default_factory=list, description="the release's own tests; empty skips")
    env: dict[str, str] = Field(default_factory=dict, description="plain variables the release's tests are given")
    secrets: dict[str, ValueSource] = Field(default_factory=dict, description=(
        "variables of the release's tests whose values are secret: variable -> { env = ... } or { secret = ... }"))
    test_database: bool = Field(False, description=(
        "give the tests a database of their own: created empty beside the live one for the run, migrated to "
        "the release's head, given to them through [database]'s variables, dropped after"))
    scan_command: list[str] | None = Field(None, description="default: bandit on the release, fail on high")
    migration_rehearsal: bool = True
    staging_environment: str | None = Field(None, description="must serve the same SHA before this one")
    require_staging_version: bool = Field(True, description=(
        "false: a staging whose served SHA cannot be verified passes, said as not verified"))


class EnvironmentConfig(Model):
    name: str
    description: str = ""
    env_files: list[FilePath] = Field(default_factory=list, description="KEY=VALUE files for env sources")
    state_dir: FilePath = Field(description="the ledger and the orchestrator's metrics live here")
    source: SourceConfig
    service: ServiceConfig
    database: DatabaseConfig
    backups: BackupConfig
    health: HealthConfig = HealthConfig()
    critical_paths: list[CriticalPathCheck] = Field(default_factory=list)
    monitoring: MonitoringConfig = MonitoringConfig()
    approvals: ApprovalConfig = ApprovalConfig()
    notifications: NotificationConfig = NotificationConfig()
    watch: WatchConfig = WatchConfig()
    rollback: RollbackConfig = RollbackConfig()
    prerequisites: PrerequisiteConfig = PrerequisiteConfig()
    migrations: MigrationSafetyConfig = MigrationSafetyConfig()
    metrics: MetricsConfig = MetricsConfig()
    dependencies: DependenciesConfig | None = Field(None, description=(
        "each release's own Python environment; without it the app runs in service.python as it is"))
    fleet: FleetConfig | None = Field(None, description=(
        "the hosts behind a load balancer, rolled batch by batch; without it the app runs on one host"))
    host: str = Field("", description="set by the orchestrator, never in a file: the fleet host this is for")
    _host_services: dict[str, ServiceConfig] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str, info: ValidationInfo) -> str:
        expected = (info.context or {}).get("file_stem")
        if expected is not None and value != expected:
            raise ValueError(f"name must match the file name: name = {expected!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _interpreter_of_the_live_release(cls, data: Any) -> Any:
        """With [dependencies] the app's interpreter is the live release's environment's."""
        dependencies, service = (data.get("dependencies"), data.get("service")) if isinstance(data, dict) else (None, None)
        if not isinstance(dependencies, dict) or not isinstance(service, dict) or "directory" not in dependencies:
            return data
        if "python" in service:
            raise ValueError("service.python: leave it out with [dependencies]: the app's interpreter is then the "
                             "live release's environment, <dependencies.directory>/current/bin/python "
                             "(dependencies.python is the one environments are created from)")
        live = str(Path(str(dependencies["directory"])) / "current" / "bin" / "python")
        return {**data, "service": {**service, "python": live}}

    @model_validator(mode="after")
    def _reload_takes_the_new_environment(self) -> EnvironmentConfig:
        if self.dependencies is None:
            return self
        if self.service.reload == "hup":
            raise ValueError('reload = "hup" keeps the running master and its interpreter, so a release\'s new '
                             'dependencies would be loaded only in part: with [dependencies] use reload = "usr2" '
                             'or a reload_command that starts fresh processes')
        if self.service.reload == "usr2" and self.service.start_command[0] != "{python}":
            raise ValueError('with [dependencies] and reload = "usr2", start the app with its interpreter first, '
                             'e.g. start_command = ["{python}", "{bin}/gunicorn", ...]: gunicorn re-executes its '
                             "interpreter with its argv on USR2, and only `{python}` (the environment's `current` "
                             "link) leads the new master to the new release's packages; a script's own #! line "
                             "names the environment it was installed in")
        return self

    @model_validator(mode="after")
    def _database_variables_are_the_databases(self) -> EnvironmentConfig:
        given = {name: "service.env" for name in self.service.env} | {name: "service.secrets" for name in self.service.secrets}
        twice = [f"{name} (in [{given[name]}])" for name in self.database.variables if name in given]
        if twice:
            raise ValueError(f"{', '.join(twice)} also given by [database]: the tool sets the database's variables "
                             "itself (the live database, or the copy the rehearsal migrates); remove them from "
                             f"[{'] and ['.join(sorted({given[n] for n in self.database.variables if n in given}))}]")
        return self

    @model_validator(mode="after")
    def _checks_are_unique(self) -> EnvironmentConfig:
        names = [check.name for check in self.critical_paths]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"critical_paths names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _hosts_services(self, info: ValidationInfo) -> EnvironmentConfig:
        """Each host's [service] is [service] with the host's differences, valid on its own."""
        if self.host and info.context is not None:
            raise ValueError("host is set by the orchestrator for one host of [fleet]; remove it from the file")
        if self.fleet is None:
            return self
        services = {}
        for host in self.fleet.hosts:
            if self.dependencies is not None and "python" in host.service:
                raise ValueError(f"fleet host {host.name}: service.python: leave it out with [dependencies]: the "
                                 "host's interpreter is its live release's environment, <dependencies_directory>"
                                 "/current/bin/python")
            if self.dependencies is None and host.dependencies_directory is not None:
                raise ValueError(f"fleet host {host.name}: dependencies_directory is for [dependencies], which "
                                 "this file does not have; remove it")
            twice = sorted(set(self.database.variables) & set(host.service.get("env") or {}))
            if twice:
                raise ValueError(f"fleet host {host.name}: service.env: {', '.join(twice)} also given by [database]: "
                                 "the tool sets the database's variables itself; remove them from the host's env")
            try:
                services[host.name] = _host_service(self.service, host, info.context, self._host_dependencies(host))
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                                     for e in exc.errors())
                raise ValueError(f"fleet host {host.name}: service: {problems}") from None
        self._host_services = services
        return self

    def for_host(self, name: str) -> EnvironmentConfig:
        """This environment as seen on one host of its fleet: the host's checkout and service."""
        if self.fleet is None:
            raise InvalidInput(f"environment {self.name}", f"it has no [fleet], so no host {name!r}",
                               "leave the host out: the environment is one host")
        try:
            host = self.fleet.host(name)
        except KeyError:
            raise InvalidInput(f"environment {self.name}", f"its [fleet] has no host {str(name)[:60]!r}",
                               f"use one of: {', '.join(h.name for h in self.fleet.hosts)}") from None
        source = self.source.model_copy(update={"workspace": host.workspace})
        return self.model_copy(update={"source": source, "service": self._host_services[name], "host": name,
                                       "dependencies": self._host_dependencies(host)})

    def _host_dependencies(self, host: HostConfig) -> DependenciesConfig | None:
        """A host's own environments: never the deploy checkout's (`[dependencies] directory`), whose
        `current` the migrations switch before the host's turn, even on the same machine."""
        if self.dependencies is None:
            return None
        directory = self.dependencies.directory
        own = host.dependencies_directory or directory.with_name(f"{directory.name}-{host.name}")
        return self.dependencies.model_copy(update={"directory": own})

    @property
    def hosts(self) -> list[EnvironmentConfig]:
        """Every host of the fleet, in the order they roll; empty for one host."""
        if self.fleet is None:
            return []
        return [self.for_host(host.name) for batch in self.fleet.batches() for host in batch]

    @property
    def requires_approval(self) -> bool:
        return bool(self.approvals.required_roles)

    def app_dir(self, tree: Path | None = None) -> Path:
        """The app's directory in `tree` (a scratch tree of a release), or in the workspace."""
        return (tree or self.source.workspace) / self.source.app_directory

    @model_serializer(mode="wrap")
    def _json_is_the_name(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """In JSON an environment is its name. The entry point loads the file once and passes the object
        down; Prefect stores a subflow's parameters as JSON, so its UI shows `config: production`, not
        every setting (a database URL among them) copied into each run."""
        return self.name if info.mode == "json" else handler(self)


def _host_service(service: ServiceConfig, host: HostConfig, context: Any,
                  dependencies: DependenciesConfig | None) -> ServiceConfig:
    differences = dict(host.service)
    merged = {**service.model_dump(exclude_unset=True), **differences}
    if dependencies is not None:  # the host's own live environment
        merged["python"] = str(dependencies.directory / "current" / "bin" / "python")
    env = differences.get("env", {})
    # An env that is not a table is left as written, for ServiceConfig to refuse with the host named.
    merged["env"] = {**service.env, **env} if isinstance(env, dict) else env
    merged["base_url"] = differences.get("base_url", f"http://{host.address}")
    return ServiceConfig.model_validate(merged, context=context)


def environments_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    configured = environ.get(ENVIRONMENTS_DIR_VARIABLE)
    return Path(configured).resolve() if configured else DEFAULT_ENVIRONMENTS_DIR


def available_environments(directory: Path | None = None) -> list[str]:
    directory = directory or environments_dir()
    return sorted(p.stem for p in directory.glob("*.toml") if ENVIRONMENT_NAME.fullmatch(p.stem))


def environment_file(name: str, directory: Path | None = None) -> Path:
    """The file of an environment named `name`, which must be one of the files that exist."""
    directory = directory or environments_dir()
    known = available_environments(directory)
    if not isinstance(name, str) or name not in known:
        raise InvalidInput(
            "environment",
            f"unknown environment {str(name)[:60]!r}",
            f"use one of: {', '.join(known) or '(none: add a <name>.toml file to ' + str(directory) + ')'}",
        )
    return directory / f"{name}.toml"


def load_environment(name: str, directory: Path | None = None) -> EnvironmentConfig:
    return load_environment_file(environment_file(name, directory))


def load_environment_file(path: Path) -> EnvironmentConfig:
    step = f"environment file {path}"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(step, f"cannot read it ({exc.strerror})", "check the path and its permissions") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(step, f"it is not valid TOML ({exc})", "fix the syntax at that line") from exc
    context = {"base_dir": path.resolve().parent, "file_stem": path.stem}
    try:
        return EnvironmentConfig.model_validate(raw, context=context)
    except ValidationError as exc:
        problems = [_explain(error, raw) for error in exc.errors()]
        raise ConfigError(step, "; ".join(problems), "fix the field(s) named and run `deployctl check` again") from None


def _explain(error: Mapping[str, Any], raw: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        known = _known_keys(error["loc"][:-1])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(known)}"
        return f"{location}: unknown key; remove it or rename it ({hint})"
    if kind == "missing":
        return f"{location}: required and missing; add it"
    if kind in ("model_type", "model_attributes_type") and _is_secret_field(error["loc"]):
        return (f"{location}: secret values are never written in the file; "
                'name their source instead: { env = "VARIABLE" } or { secret = "block-name" }')
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
    return f"{location}: {message}{shown}" if location else f"{message}{shown}"


def _is_secret_field(location: tuple[Any, ...]) -> bool:
    return (tuple(location[:2]) in (("database", "url"), ("service", "secrets"), ("prerequisites", "secrets"))
            or (location[:1] == ("critical_paths",) and "secrets" in location))


def _known_keys(location: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = EnvironmentConfig
    for part in location:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return sorted((f.alias or n) for n, f in model.model_fields.items())
