"""The canary: the release started once more beside production, checked before it takes traffic.

After the migrations and before the reload, `check-canary` starts the checked-out release with the
app's own start command on a free loopback port (`[service.canary]` says which variables move it
there), waits for it to answer, and runs the same health checks and critical paths that phase 3 runs
against production. A release that fails them never serves a user: the deploy fails with production
still on the previous release's processes, and the rollback undoes the migrations. Like phase 3, the
critical paths write to the live database (a scraped sample posting, a letter, an outbox mail).

The canary gets a scratch directory of its own (`{scratch}`) for its pid file, log, control socket
and local files, so it never touches production's; it is stopped, with its whole process group, on
every path out of the step.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError, ServiceError
from deployments.logs import run_log
from deployments.secrets import redact, resolve_app_environment
from tasks.steps import read_step
from tasks.health import assess, probe
from tasks.app_commands import expand_argv
from tasks.processes import Advice, Command, child_env, spawn
from tasks.served_version import Processes
from tasks.service import scan_log
from tasks.migrations import live_schema_unmoved
from tasks.smoke import run_critical_path_tests
from tasks.waiting import wait_until


@read_step("check-canary", retries=0)
def check_canary(config: EnvironmentConfig, sha: str) -> str:
    """Phase 2, before the reload: the release answers health and the critical paths on a canary."""
    step = f"check canary ({config.name})"
    if config.service.canary is None:
        return "no [service.canary] in the environment file: the release meets traffic unchecked"
    # The canary runs on the live database (the migrations are done); its schema must not move under it.
    with live_schema_unmoved(config, step, "the canary", "ran only the release's code on it"), \
            canary(config) as (url, log, processes):
        started = time.monotonic()
        canary_config = config.model_copy(update={"service": config.service.model_copy(update={"base_url": url})})
        try:
            health = assess(canary_config, sha, step, processes=processes)
            checked = "health"
            if config.service.canary.critical_paths and config.critical_paths:
                checked += f" and {len(run_critical_path_tests.fn(canary_config).results)} critical paths"
        except DeployError as exc:
            errors = scan_log(log, config.service.error_patterns)
            seen = f"; its log: {redact(errors[0])[:200]}" if errors else ""
            undo = ("the automatic rollback undoes the migrations" if config.rollback.automatic else
                    f"run rollback/{config.name} to undo the migrations")
            raise ServiceError(step, f"the release failed on a canary at {url}, before taking traffic: "
                                     f"{exc.cause}{seen}",
                               f"{config.name} still runs the previous release, which never stopped serving, and "
                               f"{undo}; fix the release for {config.name}'s data and settings") from None
        seen = health.served.describe()
        return (f"{checked} passed on a canary at {url}{' ' if seen.startswith('serving') else ', '}{seen} "
                f"({time.monotonic() - started:.1f} s of checks)")


# A port taken between its choice and the canary's bind (by an outgoing connection's local port, or
# another process's bind(0)) makes the canary exit at once saying so; then it is started on another.
PORT_TRIES = 3
# How servers say it, lower-cased: Python and gunicorn ("[Errno 98] Address already in use",
# "Connection in use"), uvicorn ("...: address already in use"), Node (EADDRINUSE).
PORT_TAKEN = ("address already in use", "connection in use", "eaddrinuse")


@contextmanager
def canary(config: EnvironmentConfig) -> Iterator[tuple[str, Path, Processes]]:
    """The release running on a free loopback port until the block ends: (its URL, its log, its processes)."""
    assert config.service.canary is not None
    settings = config.service.canary
    step = f"check canary ({config.name})"
    # The temporary directory, not the state dir: a unix socket's path must stay under 108 bytes.
    scratch = Path(tempfile.mkdtemp(prefix=f"canary-{config.name}-"))
    moves_port = "{port}" in settings.url or any("{port}" in value for value in settings.env.values())
    argv = expand_argv(settings.start_command or config.service.start_command, config)
    log = scratch / "canary.log"
    process = None
    try:
        for attempt in range(1, PORT_TRIES + 1):
            values = {"{port}": str(_free_port()), "{scratch}": str(scratch)}
            env = {**resolve_app_environment(config), **{name: _fill(value, values) for name, value in settings.env.items()}}
            url = _fill(settings.url, values)
            said_before = log.stat().st_size if log.exists() else 0
            with open(log, "ab") as out:
                # A killed deploy takes its canary with it: SIGTERM, so the master stops its workers.
                process = spawn(Command.of(argv, cwd=config.app_dir(), env=child_env(env)), step=step,
                                error=ServiceError, advice=Advice(start="check service.start_command and [service.canary]",
                                                                  slow="check [service.canary] timeout_seconds"),
                                stdout=out, stderr=subprocess.STDOUT, new_session=True, die_signal=signal.SIGTERM)
            try:
                _wait_until_answering(process, url + config.health.path, settings.timeout_seconds,
                                      config.health.timeout_seconds, log, step)
                break
            except ServiceError:
                if not (moves_port and attempt < PORT_TRIES and process.poll() is not None
                        and _port_taken(log, said_before)):
                    raise
                run_log().warning("%s: port %s was taken as the canary started; starting it on another",
                                  step, values["{port}"])
                _stop_group(process)
                process = None
        assert process is not None
        yield url, log, Processes(process.pid, env)
    finally:
        if process is not None:
            _stop_group(process)
        shutil.rmtree(scratch, ignore_errors=True)


def _fill(text: str, values: dict[str, str]) -> str:
    """Only the canary's own placeholders: a value may hold other braces (JSON, say)."""
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def _port_taken(log: Path, since: int) -> bool:
    """What the canary logged from byte `since` on says its address was in use."""
    with open(log, "rb") as said:
        said.seek(since)
        text = said.read().decode(errors="replace").lower()
    return any(sign in text for sign in PORT_TAKEN)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, timeout: float, probe_timeout: float,
                          log: Path, step: str) -> None:
    def answering() -> bool:
        if process.poll() is not None:
            raise ServiceError(step, f"the release's canary exited with status {process.returncode} before "
                                     f"answering{_last_line(log)}", "the running release was not touched; fix the release")
        return probe(url, probe_timeout).status_code is not None

    def silent() -> ServiceError:
        return ServiceError(step, f"the release's canary did not answer {url} within {timeout:g} s{_last_line(log)}",
                            "the running release was not touched; raise [service.canary] timeout_seconds "
                            "if the app starts slowly")

    wait_until(answering, timeout, f"the release's canary to answer {url}", interval=0.1, on_timeout=silent)


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (its log ends: {redact(lines[-1])[:200]})" if lines else ""


def _stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the canary's process group (its master and workers), SIGKILL what is left after `grace`."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
