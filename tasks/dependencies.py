"""Each release's own dependencies ([dependencies]): built before anything runs the release, made live
with its code, switched back with it by a rollback.

    install-dependencies   prerequisite, on the release's scratch tree: reuse the environment its
                           dependency files key, or build it (`python -m venv`, install_command,
                           check_command) beside the live one; a failed install fails the deploy
                           before anything changed, in one line
    switch-environment     phase 2, right after the checkout (and in a rollback, right after the
                           previous release's checkout): `current` is relinked to the release's
                           environment in one rename

An environment is built where it will live: a venv is not relocatable (pyvenv.cfg and its scripts' #!
lines name its path). Its marker is written last, so a build cut off by a crash is recognised and
made again. Builds and pruning hold `<directory>/.lock` (a dry run may build while a deploy runs).

gunicorn's USR2 re-executes `sys.executable` with its argv: the app's master, started as
`<directory>/current/bin/python <directory>/current/bin/gunicorn ...`, re-executes through the link,
so the new master and its workers import the new release's packages while the old master keeps the
ones it loaded. Processes of the old release that import a module for the first time between the
switch and the reload read it from the new environment, as they read code from the new checkout.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError, PreflightError
from deployments.logs import run_log
from records.ledger import Ledger
from tasks.app_commands import expand_argv
from tasks.processes import Advice, Command, child_env, run
from tasks.release_environments import (
    CURRENT,
    MARKER,
    ReleaseEnvironment,
    dependency_files,
    environment_of,
    live_environment,
    release_environment,
)
from tasks.steps import change_step, read_step
from tasks.waiting import wait_until

STEP = "install dependencies"
VENV_TIMEOUT = 120.0
CHECK_TIMEOUT = 120.0
LOCK_FILE = ".lock"


@contextmanager
def building_lock(config: EnvironmentConfig, step: str = STEP) -> Iterator[None]:
    """`<directory>/.lock`, waited for at most dependencies.timeout_seconds."""
    assert config.dependencies is not None
    directory = config.dependencies.directory
    directory.mkdir(parents=True, exist_ok=True)
    bound = config.dependencies.timeout_seconds
    with open(directory / LOCK_FILE, "a+") as handle:
        def taken() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not taken():
            run_log().info("Waiting up to %g s for the lock of %s: another install holds it.", bound, directory)
            wait_until(taken, bound, f"the lock of {directory}", interval=0.2, on_timeout=lambda: PreflightError(
                step, f"another install into {directory} held its lock for {bound:g} s",
                "wait for it (another deploy or dry run of this environment) and run again; nothing was changed"))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_environment(config: EnvironmentConfig, app_dir: Path,
                       step: str = STEP) -> tuple[ReleaseEnvironment, float | None]:
    """The release's environment, built if it is not whole yet; with the seconds the build took (None: reused)."""
    environment = release_environment(config, app_dir)
    if environment.complete:
        return environment, None
    with building_lock(config, step):
        if environment.complete:  # built by whoever held the lock
            return environment, None
        started = time.perf_counter()
        if environment.path.exists():  # a build cut off part-way: made again from nothing
            shutil.rmtree(environment.path)
        try:
            _build(config, environment, app_dir, step)
        except BaseException:
            shutil.rmtree(environment.path, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        _write_marker(config, environment, app_dir, seconds)
    return environment, seconds


def _build(config: EnvironmentConfig, environment: ReleaseEnvironment, app_dir: Path, step: str) -> None:
    dependencies = config.dependencies
    assert dependencies is not None
    unchanged = "; nothing was changed"
    venv = [dependencies.python, "-m", "venv", *dependencies.venv_options, environment.path]
    run(Command.of(venv, timeout=VENV_TIMEOUT, name="python -m venv"), step=step, error=PreflightError, advice=Advice(
            start=f"check dependencies.python ({dependencies.python}){unchanged}",
            slow=f"check the disk of {dependencies.directory}{unchanged}",
            failed=f"check dependencies.python (its venv module; Debian: python3-venv){unchanged}"))
    # As an activated environment: tools that install into "the active environment" (pip, uv) find it.
    env = child_env({**dependencies.env, "VIRTUAL_ENV": str(environment.path)})
    env["PATH"] = os.pathsep.join([str(environment.path / "bin"), env.get("PATH", os.defpath)])
    install = expand_argv(dependencies.install_command, config, python=environment.python)
    run(Command.of(install, cwd=app_dir, env=env, timeout=dependencies.timeout_seconds, name="the install"),
        step=step, error=PreflightError, advice=Advice(
            start=f"fix dependencies.install_command{unchanged}",
            slow=f"make the install faster (a local index or cache) or raise dependencies.timeout_seconds{unchanged}",
            failed=f"fix the release's {', '.join(dependencies.files)} or dependencies.install_command{unchanged}"))
    if dependencies.check_command:
        check = expand_argv(dependencies.check_command, config, python=environment.python)
        run(Command.of(check, cwd=app_dir, env=env, timeout=CHECK_TIMEOUT, name="the check"), step=step,
            error=PreflightError, advice=Advice(
                start=f"fix dependencies.check_command{unchanged}",
                slow=f"make dependencies.check_command faster{unchanged}",
                failed=f"the installed packages conflict: fix the release's {', '.join(dependencies.files)}{unchanged}"))


def _write_marker(config: EnvironmentConfig, environment: ReleaseEnvironment, app_dir: Path, seconds: float) -> None:
    files = {name: sha256(content).hexdigest() for name, content in dependency_files(config, app_dir).items()}
    facts = {"key": environment.key, "files": files, "built_at": datetime.now(timezone.utc).isoformat(),
             "seconds": round(seconds, 1)}
    scratch = environment.path / f"{MARKER}.new"
    scratch.write_text(json.dumps(facts, indent=2) + "\n")
    os.replace(scratch, environment.path / MARKER)


@read_step("install-dependencies", retries=0)
def install_dependencies(config: EnvironmentConfig, tree: Path) -> str:
    """Prerequisite: the release's own dependencies, installed before anything runs it."""
    if config.dependencies is None:
        return f"no [dependencies]: the release runs in {config.service.python} as it is"
    environment, seconds = ensure_environment(config, config.app_dir(tree))
    live = live_environment(config)
    pruned = prune_environments(config, keep={environment.key} | ({live.key} if live else set()))
    files = ", ".join(config.dependencies.files)
    if seconds is None:
        same = " (the live one)" if live is not None and live.key == environment.key else ""
        said = f"environment {environment.key}{same} reused: {files} unchanged"
    else:
        checked = ", checked" if config.dependencies.check_command else ""
        said = f"environment {environment.key} built in {seconds:.1f} s ({files}{checked})"
    return said + (f"; removed {len(pruned)} old environment(s)" if pruned else "")


@change_step("switch-environment")
def switch_environment(config: EnvironmentConfig, key: str | None = None) -> str:
    """Make the release's environment live: `current` links it (the environment `key`, or the one the
    workspace's release keys). One that is missing (pruned, or never built) is built first."""
    if config.dependencies is None:
        return "no [dependencies]"
    environment = environment_of(config, key) if key else release_environment(config, config.app_dir())
    built = ""
    if not environment.complete:
        if key and release_environment(config, config.app_dir()).key != key:
            raise DeployError("switch environment", f"environment {key} is gone and the workspace's release keys "
                              "another", f"build it by hand in {config.dependencies.directory}, or roll back again")
        environment, seconds = ensure_environment(config, config.app_dir(), step="switch environment")
        built = f", built first in {seconds or 0:.1f} s"
    before = live_environment(config)
    link = config.dependencies.directory / CURRENT
    scratch = link.with_name(f".{CURRENT}.{os.getpid()}")
    scratch.unlink(missing_ok=True)
    os.symlink(environment.key, scratch)  # relative: the directory may move with its environments
    os.replace(scratch, link)
    if before is not None and before.key == environment.key:
        return f"environment {environment.key} stays live (dependencies unchanged){built}"
    return f"environment {environment.key} is live, was {before.key if before else 'none'}{built}"


def prune_environments(config: EnvironmentConfig, keep: set[str]) -> list[str]:
    """Remove the environments beyond dependencies.keep (else backups.keep), oldest first, never one in `keep` (the live one,
    the one being deployed) nor one a recent release of the ledger recorded (a rollback's target)."""
    assert config.dependencies is not None
    count = config.dependencies.keep or config.backups.keep
    for release in Ledger.for_state_dir(config.state_dir).releases(config.name, limit=count):
        keep |= {key for key in (release.environment_before, release.environment_after) if key}
    directory = config.dependencies.directory
    built = sorted((p for p in directory.iterdir() if p.is_dir() and not p.is_symlink() and (p / MARKER).is_file()),
                   key=lambda p: (p / MARKER).stat().st_mtime, reverse=True)
    removed: list[str] = []
    with building_lock(config):
        for path in built[count:]:
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed
