"""Quality gates of a release, run on a scratch worktree of its SHA: its own tests and a security scan.

Neither gets the app's secrets: a release's test suite has no business with production's database.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deployments.config import EnvironmentConfig
from deployments.errors import PreflightError
from tasks import read_step
from tasks.service import app_process_env, expand_argv

TEST_TIMEOUT = 1800


@dataclass(frozen=True)
class ScanReport:
    high: int
    medium: int
    low: int
    findings: list[str]

    def describe(self) -> str:
        return f"high {self.high}, medium {self.medium}, low {self.low}"


@read_step("run-release-tests", retries=0)
def run_release_tests(config: EnvironmentConfig, tree: Path) -> str:
    """Prerequisite: all automated tests of the release pass."""
    if not config.prerequisites.test_command:
        return "no test_command configured: skipped"
    argv = expand_argv(config.prerequisites.test_command, config, tree)
    try:
        result = subprocess.run(argv, cwd=tree, env=app_process_env({"CI": "1"}), capture_output=True, text=True,
                                timeout=TEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PreflightError("run release tests", f"the tests ran longer than {TEST_TIMEOUT} s",
                             "make them faster or raise the limit; nothing was changed") from None
    except OSError as exc:
        raise PreflightError("run release tests", f"cannot start {argv[0]} ({exc.strerror})",
                             "fix prerequisites.test_command; nothing was changed") from None
    output = (result.stdout + result.stderr).strip().splitlines()
    summary = output[-1] if output else f"exit {result.returncode}"
    if result.returncode != 0:
        raise PreflightError("run release tests", f"the release's tests failed ({summary})",
                             "fix the release and push it again; nothing was changed")
    return summary


@read_step("run-security-scan", retries=0)
def run_security_scan(config: EnvironmentConfig, tree: Path) -> ScanReport | str:
    """Prerequisite: a security scan of the release finds no critical (high severity) issue."""
    step = "run security scan"
    if config.prerequisites.scan_command is not None:
        argv = expand_argv(config.prerequisites.scan_command, config, tree)
        try:
            result = subprocess.run(argv, cwd=tree, env=app_process_env({}), capture_output=True, text=True,
                                    timeout=1800)
        except OSError as exc:
            raise PreflightError(step, f"cannot start {argv[0]} ({exc.strerror})", "install the scanner or "
                                 "fix prerequisites.scan_command; nothing was changed") from None
        except subprocess.TimeoutExpired:
            raise PreflightError(step, f"{argv[0]} ran longer than 1800 s",
                                 "make the scan faster or scan less; nothing was changed") from None
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise PreflightError(step, f"{argv[0]} reported problems: {' / '.join(tail)}",
                                 "fix the findings or adjust the scanner's baseline; nothing was changed")
        return f"{argv[0]} passed"
    excluded = ",".join(str(p) for p in (tree / "tests", tree / "migrations", tree / ".git") if p.exists())
    argv = [sys.executable, "-m", "bandit", "-r", str(tree), "-f", "json", "-q"]
    if excluded:
        argv += ["-x", excluded]
    result = subprocess.run(argv, cwd=tree, env=app_process_env({}), capture_output=True, text=True, timeout=1800)
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
