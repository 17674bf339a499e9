"""Every process the orchestrator runs goes through here, git excepted: argv as data, one way to fail.
(Git runs through GitPython in tasks/source.py, with the same guarantees: a bound, a clean
environment, death with its thread, and one mapping of its failures.)

A `Command` is what to run (argv, working directory, environment, time limit) and is built by a pure
function beside its resource (`bandit_argv`, `expand_argv`, ...), so tests compare it by equality.
`run` starts it with no shell, bound to die with the thread that started it, waits at most its
limit, and turns what can go wrong into one of the step's errors, each saying what to do:

- the program cannot be started       -> `error(step, "cannot start X (No such file...)", advice.start)`
- it runs past its limit              -> `error(step, "X ran longer than N s", advice.slow)`
- it exits non-zero, when `advice.failed` is given
                                      -> `error(step, "X failed: <its last error line>", advice.failed)`

What it printed is redacted (no secret value of the environment files) before any of it is reported.
Long-lived children (the app, the canary's server, pg_dump | pg_restore) are started by `spawn`,
with the same environment rules and the same guarantee that they do not outlive a killed deploy.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from deployments.secrets import redact

# What a child of ours may inherit from the orchestrator's environment; the rest (API keys, the
# Prefect settings) stays here. The app's own variables are added by the caller.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def child_env(variables: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: PATH, HOME, locale and temp dir from ours, then `variables`."""
    base = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    return {**base, **variables}


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    cwd: Path | None = None
    env: Mapping[str, str] | None = field(default=None, compare=False, repr=False)  # may hold secrets
    timeout: float = 60.0
    name: str = ""  # how errors call it; argv[0]'s file name by default

    @classmethod
    def of(cls, argv: Sequence[str], **kwargs: Any) -> Command:
        return cls(tuple(str(part) for part in argv), **kwargs)

    @property
    def called(self) -> str:
        return self.name or Path(self.argv[0]).name


@dataclass(frozen=True)
class Advice:
    """What the operator should do when the command cannot start, runs too long, or fails."""

    start: str
    slow: str
    failed: str | None = None  # None: a non-zero exit is the caller's to judge


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_line(self) -> str:
        """The last line it printed on either stream (redacted), or its exit status."""
        return _last(self.stdout + "\n" + self.stderr) or f"exit {self.returncode}"

    def error_line(self) -> str:
        """The last line of its errors, else of its output (redacted), else its exit status."""
        return _last(self.stderr) or _last(self.stdout) or f"exit {self.returncode}"


# A DeployError subclass, or anything built the same way: (step, cause, action).
ErrorFactory = Callable[[str, str, str], Exception]


def one_line(kind: Callable[[str], Exception]) -> ErrorFactory:
    """For tools whose errors take one message (the sandbox, the stack): "step: cause; action"."""
    return lambda step, cause, action: kind(f"{step}: {cause}; {action}")


def run(command: Command, *, step: str, error: ErrorFactory, advice: Advice, input: str | None = None,
        die_signal: int = signal.SIGKILL, capture: bool = True) -> Finished:
    """Run `command` to its end, UTF-8 text in and out (undecodable bytes replaced); its failures are
    the module docstring's. `capture=False` lets it print to our terminal (then not in the result)."""
    started = time.perf_counter()
    try:
        result = subprocess.run(list(command.argv), cwd=command.cwd, env=_env(command), input=input,
                                capture_output=capture, encoding="utf-8", errors="replace", timeout=command.timeout,
                                preexec_fn=dies_with_us(die_signal))
    except OSError as exc:
        raise error(step, f"cannot start {command.argv[0]} ({exc.strerror or exc})", advice.start) from None
    except subprocess.TimeoutExpired:
        raise error(step, f"{command.called} ran longer than {command.timeout:g} s", advice.slow) from None
    finished = Finished(result.returncode, result.stdout or "", result.stderr or "", time.perf_counter() - started)
    if advice.failed is not None and not finished.ok:
        raise error(step, f"{command.called} failed: {finished.error_line()}", advice.failed)
    return finished


def spawn(command: Command, *, step: str, error: ErrorFactory, advice: Advice,
          stdin: int | IO[Any] | None = subprocess.DEVNULL, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = None, new_session: bool = False,
          die_signal: int | None = signal.SIGKILL) -> subprocess.Popen[bytes]:
    """Start `command` and return at once. It gets `die_signal` when the thread that started it dies
    (None: it outlives us, as the app must); `new_session` makes it lead a process group of its own."""
    try:
        return subprocess.Popen(list(command.argv), cwd=command.cwd, env=_env(command), stdin=stdin,
                                stdout=stdout, stderr=stderr, start_new_session=new_session,
                                preexec_fn=None if die_signal is None else dies_with_us(die_signal))
    except OSError as exc:
        raise error(step, f"cannot start {command.argv[0]} ({exc.strerror or exc})", advice.start) from None


def wait(process: subprocess.Popen[Any], limit: float) -> int:
    """A child's exit code, waiting at most `limit` seconds before killing it."""
    try:
        return process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def dies_with_us(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` for a child that must not outlive a killed deploy (a migration, a checkout):
    Linux sends it `sig` when the thread that started it dies, so a crash never leaves one running
    behind the rollback's back. A server that must take its workers with it asks for SIGTERM (see
    tasks/canary). A parent killed between the fork and the prctl would never send the signal, so
    the child checks it still has the parent it was forked from, and goes if not."""
    parent = os.getpid()

    def in_child() -> None:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return in_child


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return redact(lines[-1]) if lines else ""


def _env(command: Command) -> dict[str, str] | None:
    return dict(command.env) if command.env is not None else None
