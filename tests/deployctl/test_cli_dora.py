"""`deployctl dora`: the figures of a known month in a real ledger, as a table, as JSON, as an artifact."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deployctl.cli import main as deployctl
from deployments.config import load_environment_file
from records.ledger import Ledger
from tests.tasks.release_history import environment_file, write_history


@pytest.fixture
def environments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environments directory whose production ledger holds the month of release_history, ending now."""
    config = load_environment_file(environment_file(tmp_path))
    ledger = Ledger.for_state_dir(config.state_dir)
    write_history(ledger, now=datetime.now(timezone.utc))
    ledger.engine.dispose()
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(tmp_path))
    return tmp_path


def test_the_table(environments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deployctl(["dora", "production"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("DORA figures for production, last 30 days (")
    assert lines[2:] == [
        "deployment frequency   4 succeeded deploys: 0.13 a day, 0.93 a week",
        "lead time for changes  median 4h 00m, p90 10h 12m",
        "change failure rate    42.9 % (3 of 7 deploys that changed production)",
        "time to restore        median 40m 00s (2 restored, 1 not restored)",
        "success ratio          57.1 % against the 95 % target: not met",
        "changed nothing        1 aborted, 1 noop",
    ]


def test_json_and_the_window(environments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deployctl(["dora", "production", "--days", "7", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert {key: figures[key] for key in ("environment", "days", "deployments", "changed", "failures",
                                          "change_failure_rate", "lead_time_median_seconds", "not_restored",
                                          "success_ratio", "success_target", "target_met")} == {
        "environment": "production", "days": 7, "deployments": 1, "changed": 2, "failures": 1,
        "change_failure_rate": 0.5, "lead_time_median_seconds": 43200.0, "not_restored": 1,
        "success_ratio": 0.5, "success_target": 0.95, "target_met": False}


def test_the_target_comes_from_the_environment_file(environments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    environment_file(environments, "success_target = 0.5")
    assert deployctl(["dora", "production", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert (figures["success_ratio"], figures["success_target"], figures["target_met"]) == (4 / 7, 0.5, True)


def test_bad_input(environments: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deployctl(["dora", "qa"]) == 2
    assert "unknown environment 'qa'. use one of: production" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        deployctl(["dora", "production", "--days", "0"])
    assert exited.value.code == 2
    assert "'0' is not a whole number of days of at least 1" in capsys.readouterr().err


def test_the_artifact_needs_a_prefect_api(environments: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployctl.stack import Stack

    monkeypatch.setattr(Stack, "healthy", lambda self: False)  # as if no local server of `make deploy` is up
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert deployctl(["dora", "production", "--artifact"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "PREFECT_API_URL is not set and no local Prefect server is up" in captured.err
    assert "make deploy" in captured.err


def test_output_cut_short_by_a_pipe_is_no_error(environments: Path) -> None:
    """`deployctl dora production | head -1` once head has gone: no traceback, no BrokenPipeError."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEPLOY_ENVIRONMENTS_DIR": str(environments)}
    gone, pipe = os.pipe()
    os.close(gone)  # the reader has exited: every write to the pipe fails with EPIPE
    try:
        command = subprocess.run([sys.executable, "-m", "deployctl", "dora", "production"], env=env, stdout=pipe,
                                 stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(pipe)
    assert command.stderr == "", command.stderr
