"""The release the app serves, and what shows it. A check says "serving X" only when one of these did:

    its health answer        `version` in /api/health (health.check_version = true)
    health.version_command   argv run in the app's directory with the app's environment: the first line
                             it prints is the SHA, or a prefix of 7 hex digits or more
    health.version_file      a file in the app's directory holding the SHA (say, written by the app as it starts)
    the workspace            its HEAD, when every app process started after HEAD was checked out: they
                             imported what is on disk. A weaker proof, and said as what it is: "workspace at
                             X and every app process started after its checkout"

With check_version = false the command or the file is asked, else the workspace. When nothing shows
the SHA, the answer is "serving version not verified: <why>", never "serving X". A command or a file
that is set and gives no SHA is an error naming it: the environment file asked for a proof that is broken.

A canary shares the app's directory, so its version file would be production's: it is asked by the
command (with the canary's environment) or shown by the workspace, the canary's own processes having
started after the checkout.

    HealthCheckFailed
     ├── VersionUnreadable    health.version_command or health.version_file gave no SHA
     └── VersionNotVerified   nothing showed which release is served
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError, HealthCheckFailed
from deployments.secrets import redact, resolve_app_environment
from tasks.app_commands import app_command
from tasks.process_state import children, running_pid, started_at
from tasks.processes import Advice, run
from tasks.source import checked_out_at, current_sha

SHA_OR_PREFIX = re.compile(r"[0-9a-f]{7,64}")
# A process must start this long after the checkout to count as after it: the kernel counts a start in
# 10 ms ticks and stamps a file with a clock that may lag a tick behind.
CLOCK_MARGIN = 0.05
UNSEEN_ACTION = ("set health.version_command (or health.version_file) so the served SHA can be seen, or make "
                 "the reload start every app process anew")


class VersionUnreadable(HealthCheckFailed):
    pass


class VersionNotVerified(HealthCheckFailed):
    pass


@dataclass(frozen=True)
class Served:
    """What shows the served release: `sha` (or a prefix of it) and where it was seen, or, with no
    `sha`, why nothing could show it."""

    sha: str | None
    source: Literal["health", "command", "file", "workspace", "none"]
    detail: str = ""  # the file read, the processes that started after the checkout, or why not verified

    @property
    def verified(self) -> bool:
        return self.sha is not None

    def is_release(self, sha: str) -> bool:
        return self.sha is not None and sha.lower().startswith(self.sha)

    def describe(self, verb: str = "serving") -> str:
        if self.sha is None:
            return f"serving version not verified: {self.detail}"
        short = self.sha[:12]
        if self.source == "command":
            return f"{verb} {short} (per health.version_command)"
        if self.source == "file":
            return f"{verb} {short} (per {self.detail})"
        if self.source == "workspace":
            return f"workspace at {short} and every {self.detail} started after its checkout"
        return f"{verb} {short}"


@dataclass(frozen=True)
class Processes:
    """Who serves, when it is not the app its pid file names: a canary's lead process and its environment."""

    lead: int
    env: Mapping[str, str]
    name: str = "canary process"


def served_version(config: EnvironmentConfig, body: Mapping[str, Any] | None, step: str,
                   processes: Processes | None = None) -> Served:
    """The release the app serves, as the first source of the module docstring that applies shows it.
    `body` is its /api/health answer; `processes` the canary's, when it is one that is asked."""
    version = (body or {}).get("version")
    if config.health.check_version:
        if isinstance(version, str):
            return Served(version, "health")
        return Served(None, "none", "the health answer carries no version")
    if config.health.version_command:
        env = processes.env if processes else resolve_app_environment(config)
        return _from_command(config, env, step)
    if config.health.version_file and processes is None:
        return _from_file(config, step)
    seen = _from_workspace(config, processes)
    if seen.verified:
        return seen
    answer = ("the health answer carries no version" if version is None else
              "the health answer's version is not checked (health.check_version = false)")
    unset = "health.version_command is not set" if processes else \
        "neither health.version_command nor health.version_file is set"
    return dataclasses.replace(seen, detail=f"{answer} and {unset}; {seen.detail}")


def _from_command(config: EnvironmentConfig, env: Mapping[str, str], step: str) -> Served:
    argv = config.health.version_command
    called = f"health.version_command ({' '.join(argv)})"
    fix = "fix health.version_command: it must print the SHA the app serves on its first line"
    command = dataclasses.replace(app_command(config, argv, env, timeout=config.health.timeout_seconds), name=called)
    result = run(command, step=step, error=VersionUnreadable,
                 advice=Advice(start=f"check {called}", slow=fix, failed=fix))
    return Served(_sha(result.stdout, called, "printed", step, fix), "command")


def _from_file(config: EnvironmentConfig, step: str) -> Served:
    name = config.health.version_file or ""
    path = config.app_dir() / name
    fix = "the app must write the SHA it serves there; or correct health.version_file"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise VersionUnreadable(step, f"health.version_file {path} cannot be read ({exc.strerror})", fix) from None
    return Served(_sha(text, f"health.version_file {path}", "holds", step, fix), "file", name)


def _sha(text: str, where: str, says: str, step: str, fix: str) -> str:
    first = (text.strip().splitlines() or [""])[0].strip().lower()
    if not SHA_OR_PREFIX.fullmatch(first):
        shown = repr(redact(first)[:80]) if first else "nothing"
        raise VersionUnreadable(step, f"{where} {says} {shown}, not a SHA (7 to 64 hex digits)", fix)
    return first


def _from_workspace(config: EnvironmentConfig, processes: Processes | None) -> Served:
    workspace = config.source.workspace
    if not workspace.is_dir():
        return Served(None, "none", f"the workspace {workspace} is not readable on this host")
    try:
        head = current_sha(workspace)
        moved = checked_out_at(workspace, head)
    except DeployError as exc:
        return Served(None, "none", f"the workspace {workspace} cannot be read ({exc.cause})")
    if moved is None:
        return Served(None, "none", f"the workspace's reflog does not say when {head[:12]} was checked out")
    lead = processes.lead if processes else running_pid(config)
    name = processes.name if processes else "app process"
    if lead is None:
        return Served(None, "none", f"no app process runs ({config.service.pid_file} names none)")
    starts = {pid: started_at(pid) for pid in [lead, *children(lead)]}
    if starts[lead] is None:
        return Served(None, "none", f"no app process runs ({name} {lead} has gone)")
    for pid, started in starts.items():
        if started is not None and started <= moved + CLOCK_MARGIN:  # None: a worker gone since, serving nothing
            return Served(None, "none", f"{name} {pid} started before the workspace's checkout of {head[:12]}")
    return Served(head, "workspace", name)
