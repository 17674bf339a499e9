"""Quality gates of a release, run on a scratch worktree of its SHA: its own tests and a security scan.

Neither gets the app's secrets: a release's test suite has no business with production's database.
The tests get what `[prerequisites]` gives them, and with `test_database` a database of their own.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deployments.config import EnvironmentConfig
from deployments.errors import BackupFailed, MigrationFailed, PreflightError
from deployments.secrets import database_env, redact, resolve, resolve_database_url
from tasks.steps import read_step
from tasks.processes import Advice, Command, child_env, run
from tasks.app_commands import expand_argv
from tasks.backups import empty_database
from tasks.migrations import live_schema_unmoved, run_runner

TEST_TIMEOUT = 1800
SCAN_TIMEOUT = 1800


@dataclass(frozen=True)
class ScanReport:
    high: int
    medium: int
    low: int
    findings: list[str]

    def describe(self) -> str:
        return f"high {self.high}, medium {self.medium}, low {self.low}"


def bandit_argv(tree: Path) -> list[str]:
    """The built-in scan: bandit over the release, its tests, migrations and .git left out."""
    excluded = ",".join(str(p) for p in (tree / "tests", tree / "migrations", tree / ".git") if p.exists())
    return [sys.executable, "-m", "bandit", "-r", str(tree), "-f", "json", "-q", *(["-x", excluded] if excluded else [])]


@read_step("run-release-tests", retries=0)
def run_release_tests(config: EnvironmentConfig, tree: Path) -> str:
    """Prerequisite: all automated tests of the release pass. They run in the release's scratch tree and
    environment with `[prerequisites] env` and `secrets`; with `test_database`, on a database of their
    own made for this run and migrated to the release's head, never the live one nor a shared one."""
    if not config.prerequisites.test_command:
        return "no test_command configured: skipped"
    step = "run release tests"
    variables = {"CI": "1", **config.prerequisites.env}
    for variable, source in config.prerequisites.secrets.items():
        variables[variable] = resolve(source, f"prerequisites.secrets.{variable}", config)
    # The live database's schema is proven unmoved however the tests reach a database (an app whose
    # settings fall back to a file or a default could still find production's).
    with live_schema_unmoved(config, step, "the release's tests", "gave them no setting of it"), \
            _test_database(config, tree, variables, step) as database:
        result = run(Command.of(expand_argv(config.prerequisites.test_command, config, tree), cwd=config.app_dir(tree),
                                env=child_env({**variables, **database}), timeout=TEST_TIMEOUT, name="the tests"),
                     step=step, error=PreflightError, advice=Advice(
                         start="fix prerequisites.test_command; nothing was changed",
                         slow="make them faster or raise the limit; nothing was changed"))
    summary = runner_result_line(result.stdout, result.stderr) or result.last_line()
    if not result.ok:
        failing = failing_tests(result.stdout)
        named = f"; failing: {', '.join(failing[:5])}{' and more' if len(failing) > 5 else ''}" if failing else ""
        raise PreflightError(step, f"the release's tests failed ({summary}{named})",
                             "fix the release and push it again; nothing was changed")
    return summary + (" (on a database of their own, migrated to the release's head)" if database else "")


@contextmanager
def _test_database(config: EnvironmentConfig, tree: Path, variables: dict[str, str], step: str) -> Iterator[dict[str, str]]:
    """[database]'s variables pointing at an empty database made for this run and migrated to the
    release's head (with the release's own scripts); nothing without `test_database`."""
    if not config.prerequisites.test_database:
        yield {}
        return
    try:
        with empty_database(resolve_database_url(config), config.state_dir / "test-databases", "tests", step,
                            config.database.lock_timeout_ms) as url:
            database = database_env(config, url)
            try:
                run_runner(config, {**variables, **database}, tree, "upgrade", "--to", "heads", step=step, database=url)
            except MigrationFailed as exc:
                raise PreflightError(step, f"the tests' database could not be migrated: {exc.cause}",
                                     "fix the release's migrations; nothing was changed") from None
            yield database
    except BackupFailed as exc:
        raise PreflightError(step, exc.cause, exc.action) from None


# pytest's last line ("== 3 passed, 1 skipped in 2.31s =="), unittest's ("Ran 12 tests in 0.4s").
_RESULT_LINE = re.compile(r"^=*\s*((?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?|"
                          r"rerun)(?:, )?)+ in [\d.]+s(?: \([^)]*\))?)\s*=*$|^(Ran \d+ tests? in [\d.]+s)$")
_FAILING = re.compile(r"^(?:FAILED|ERROR) (\S+)")


def runner_result_line(stdout: str, stderr: str) -> str | None:
    """The test runner's own result line, wherever its other output went; None when there is none."""
    for line in reversed((stdout + "\n" + stderr).splitlines()):
        match = _RESULT_LINE.match(line.strip())
        if match:
            return redact(match[1] or match[2])
    return None


def failing_tests(stdout: str) -> list[str]:
    """The names of the tests pytest's short summary lists as failed or in error."""
    return [redact(match[1]) for line in stdout.splitlines() if (match := _FAILING.match(line.strip()))]


@read_step("run-security-scan", retries=0)
def run_security_scan(config: EnvironmentConfig, tree: Path) -> ScanReport | str:
    """Prerequisite: a security scan of the release finds no critical (high severity) issue."""
    step = "run security scan"
    if config.prerequisites.scan_command is not None:
        argv = expand_argv(config.prerequisites.scan_command, config, tree)
        result = run(Command.of(argv, cwd=config.app_dir(tree), env=child_env({}), timeout=SCAN_TIMEOUT), step=step,
                     error=PreflightError, advice=Advice(
                         start="install the scanner or fix prerequisites.scan_command; nothing was changed",
                         slow="make the scan faster or scan less; nothing was changed"))
        if not result.ok:
            tail = redact((result.stdout + result.stderr).strip()).splitlines()[-3:]
            raise PreflightError(step, f"{argv[0]} reported problems: {' / '.join(tail)}",
                                 "fix the findings or adjust the scanner's baseline; nothing was changed")
        return f"{argv[0]} passed"
    result = run(Command.of(bandit_argv(config.app_dir(tree)), cwd=config.app_dir(tree), env=child_env({}),
                            timeout=SCAN_TIMEOUT), step=step,
                 error=PreflightError, advice=Advice(start="reinstall the orchestrator's environment (make install)",
                                                     slow="scan less, or set prerequisites.scan_command"))
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise PreflightError(step, f"bandit did not produce a report ({result.stderr.strip()[-200:]})",
                             "check that bandit runs on this release") from None
    issues = report.get("results", [])
    count = {level: sum(1 for i in issues if i.get("issue_severity") == level) for level in ("HIGH", "MEDIUM", "LOW")}
    findings = [f"{Path(i['filename']).relative_to(tree)}:{i['line_number']} {i['test_id']} {i['issue_text']}"
                for i in issues if i.get("issue_severity") == "HIGH"]
    scan = ScanReport(count["HIGH"], count["MEDIUM"], count["LOW"], findings)
    if scan.high:
        raise PreflightError(step, f"bandit found {scan.high} high-severity issue(s): {'; '.join(findings[:3])}",
                             "fix them in the release; nothing was changed")
    return scan
