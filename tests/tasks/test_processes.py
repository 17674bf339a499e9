"""The process seam: argv as data, a clean environment, bounded waits, one way to fail, no secret in
what it reports, and no child outliving the thread that started it."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from deployments.errors import PreflightError
from deployments.secrets import MASK, register_secret
from tasks.processes import Advice, Command, child_env, run, spawn
from tasks.quality import bandit_argv

ADVICE = Advice(start="install it", slow="make it faster", failed="fix it")


def python(code: str, **kwargs: object) -> Command:
    return Command.of([sys.executable, "-c", code], **kwargs)  # type: ignore[arg-type]


def test_a_command_is_data_compared_by_argv_cwd_and_limit_not_by_its_environment(tmp_path: Path) -> None:
    one = Command.of(["git", "status"], cwd=tmp_path, env={"TOKEN": "a"}, timeout=5)
    assert one == Command(("git", "status"), tmp_path, {"TOKEN": "b"}, 5)
    assert "TOKEN" not in repr(one), "an environment may hold secrets: it is never shown"
    assert one != Command.of(["git", "status"], cwd=tmp_path, timeout=6)


def test_argv_builders_are_pure(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    assert bandit_argv(tmp_path) == [sys.executable, "-m", "bandit", "-r", str(tmp_path), "-f", "json", "-q",
                                     "-x", str(tmp_path / "tests")]


def test_run_returns_what_it_printed_and_how_it_ended() -> None:
    done = run(python("import sys; print('one'); print('two'); print('oops', file=sys.stderr); sys.exit(3)"),
               step="s", error=PreflightError, advice=Advice(start="x", slow="y"))
    assert (done.returncode, done.ok, done.stdout) == (3, False, "one\ntwo\n")
    assert done.error_line() == "oops" and done.last_line() == "oops"
    assert run(python("print('fine')"), step="s", error=PreflightError, advice=ADVICE).last_line() == "fine"


def test_a_program_that_cannot_start_fails_the_step_saying_so(tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as caught:
        run(Command.of([str(tmp_path / "missing")]), step="run release tests", error=PreflightError, advice=ADVICE)
    assert str(caught.value) == (f"run release tests: cannot start {tmp_path}/missing (No such file or directory). "
                                 "install it")


def test_a_program_past_its_limit_is_stopped_and_fails_the_step() -> None:
    started = time.monotonic()
    with pytest.raises(PreflightError) as caught:
        run(python("import time; time.sleep(60)", timeout=0.5, name="the tests"), step="s", error=PreflightError,
            advice=ADVICE)
    assert time.monotonic() - started < 10
    assert str(caught.value) == "s: the tests ran longer than 0.5 s. make it faster"


def test_a_failure_names_its_last_error_line_with_secrets_masked() -> None:
    secret = "pw-" + secrets.token_hex(8)
    register_secret(secret)
    with pytest.raises(PreflightError) as caught:
        run(python(f"import sys; print('connecting with {secret}', file=sys.stderr); sys.exit(1)", name="tool"),
            step="s", error=PreflightError, advice=ADVICE)
    assert str(caught.value) == f"s: tool failed: connecting with {MASK}. fix it"


def test_a_child_gets_a_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "not-for-children")
    env = child_env({"APP_SETTING": "1"})
    assert "PREFECT_API_KEY" not in env and env["APP_SETTING"] == "1" and env["PATH"] == os.environ["PATH"]
    shown = run(python("import os; print(sorted(os.environ))", env=env), step="s", error=PreflightError,
                advice=ADVICE).stdout
    assert "PREFECT_API_KEY" not in shown and "APP_SETTING" in shown


def test_a_spawned_child_dies_with_the_thread_that_started_it() -> None:
    started: list[int] = []

    def deploy_thread() -> None:
        started.append(spawn(python("import time; time.sleep(60)"), step="s", error=PreflightError,
                             advice=ADVICE).pid)

    thread = threading.Thread(target=deploy_thread)
    thread.start()
    thread.join()
    pid = started[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
            os.kill(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the child outlived the thread that started it")
