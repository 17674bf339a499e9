"""`deployctl status`: the live release, then deploys and rollbacks alike, newest first; a rollback
says what it undoes and the step where it failed."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deployctl.cli import main as deployctl
from deployments.config import load_environment_file
from records.ledger import Ledger
from tests.tasks.release_history import environment_file

V1, V2 = "04b09fd813f40c99a88f79813c1070a399b59706", "688dd2f0a0d11be9d3a4510f05b307fe2db2e07c"


@pytest.fixture
def production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """Production with a live workspace and database, and a ledger where v2 failed and its rollback
    failed too (the deploy lock was held), then a rollback by hand that worked."""
    config = load_environment_file(environment_file(tmp_path))
    config.source.workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=config.source.workspace, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "--allow-empty",
                    "-m", "live"], cwd=config.source.workspace, check=True)
    database = tmp_path / "production.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0001')")
    monkeypatch.setenv("JOBAPP_PRODUCTION_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(tmp_path))
    ledger = Ledger.for_state_dir(config.state_dir)
    start = datetime(2026, 3, 31, 12, 0, tzinfo=timezone.utc)

    def row(minutes: int, **fields: object) -> int:
        started = start + timedelta(minutes=minutes)
        return ledger.open_release(environment="production", started_at=started,
                                   finished_at=started + timedelta(minutes=5), **fields).id

    row(0, ref="v1", target_sha=V1, outcome="succeeded", phase="post-deployment-verification",
        flow_run_name="production: v1")
    v2 = row(10, ref="v2", target_sha=V2, outcome="rollback_failed", phase="post-deployment-verification",
             failed_step="check health (production)", code_changed=True, flow_run_name="production: v2")
    row(12, ref="rollback", target_sha=V1, outcome="failed", rollback_of=v2,
        failed_step="acquire deploy lock (production)", flow_run_name="rollback production: v2 → 04b09fd813f4")
    row(20, ref="rollback", outcome="failed", failed_step="acquire deploy lock (production)",
        flow_run_name="rollback production: undo the live release")
    row(30, ref="rollback", target_sha=V1, outcome="succeeded", rollback_of=v2,
        flow_run_name="rollback production: v2 → 04b09fd813f4")
    row(40, ref="v3", outcome="noop", dry_run=True, flow_run_name="production: v3 (dry run)")
    return ledger


def test_rollbacks_are_listed_with_what_they_undo_and_where_they_failed(
        production: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert deployctl(["status", "production"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("\nID "):].strip().splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["ID", "STARTED (UTC)", "KIND", "REF", "SHA", "OUTCOME", "PHASE / STEP",
                                             "WATCH", "RUN"]
    rows = [re.split(r"\s{2,}|(?<=\d) (?=\d{4}-)", line.strip()) for line in table[1:]]
    assert [r[2:] for r in rows] == [
        ["deploy", "v3", "-", "noop (dry)", "prerequisites", "-", "production: v3 (dry run)"],
        ["rollback of #2", "rollback", V1[:12], "succeeded", "-", "-", "rollback production: v2 → 04b09fd813f4"],
        ["rollback", "rollback", "-", "failed", "acquire deploy lock (production)", "-",
         "rollback production: undo the live release"],
        ["rollback of #2", "rollback", V1[:12], "failed", "acquire deploy lock (production)", "-",
         "rollback production: v2 → 04b09fd813f4"],
        ["deploy", "v2", V2[:12], "rollback_failed", "check health (production)", "-", "production: v2"],
        ["deploy", "v1", V1[:12], "succeeded", "post-deployment-verification", "-", "production: v1"],
    ], table
    assert out.startswith("production: live ") and "database at 0001" in out


def test_the_limit_counts_rollbacks_too(production: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert deployctl(["status", "production", "--limit", "2"]) == 0
    table = capsys.readouterr().out.split("\nID ", 1)[1].strip().splitlines()
    assert len(table) == 3 and "rollback of #2" in table[2], table
