"""Quality gates of a release, run on a scratch worktree of its SHA: its own tests and a security scan.

Neither gets the app's secrets: a release's test suite has no business with production's database.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from deployments.config import EnvironmentConfig
from deployments.errors import PreflightError
from deployments.secrets import redact
from tasks.steps import read_step
from tasks.processes import Advice, Command, child_env, run
from tasks.app_commands import expand_argv
from tasks.migrations import live_schema_unmoved

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
    """Prerequisite: all automated tests of the release pass."""
    if not config.prerequisites.test_command:
        return "no test_command configured: skipped"
    command = Command.of(expand_argv(config.prerequisites.test_command, config, tree), cwd=config.app_dir(tree),
                         env=child_env({"CI": "1"}), timeout=TEST_TIMEOUT, name="the tests")
    # They are given no database setting; the live one's schema is proven unmoved anyway (an app whose
    # settings fall back to a file or a default could still reach it).
    with live_schema_unmoved(config, "run release tests", "the release's tests", "gave them no database setting"):
        result = run(command, step="run release tests", error=PreflightError, advice=Advice(
            start="fix prerequisites.test_command; nothing was changed",
            slow="make them faster or raise the limit; nothing was changed"))
    summary = result.last_line()
    if not result.ok:
        raise PreflightError("run release tests", f"the release's tests failed ({summary})",
                             "fix the release and push it again; nothing was changed")
    return summary


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
