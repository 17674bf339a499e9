"""What the fault tests of both databases share (tests/faults/test_faults.py, SQLite, and
tests/faults/test_faults_postgres.py, PostgreSQL): a sandbox with the fault releases, the flows driven
with the approvals production asks for, bringing an environment to a release, and the invariants each
fault is checked against. No tests and no fixtures: each test file holds its own sandbox."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from deployments.errors import BackupFailed, MigrationFailed
from deployments.secrets import resolve_app_environment
from tasks import app_process
from tasks.app_commands import expand_argv
from records.ledger import Ledger, Release
from tasks.processes import child_env
from tests.faults.releases import MIGRATION_FAILS_MIDWAY, add_fault_releases
from tests.flows.conftest import Approver, Sandbox, approval, make_sandbox
from tests.flows.invariants import assert_healthy_on, assert_lock_free, last_release, state

APPROVERS = [approval("Dana Whitfield", "team-lead"), approval("Sam Okafor", "product-owner")]


# --- sandboxes ----------------------------------------------------------------------------------------


def fault_sandbox(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[Sandbox]:
    with contextmanager(make_sandbox)(tmp_path_factory, db) as box:
        add_fault_releases(box.root / "origin.git")
        yield box


def restart_app(box: Sandbox, env: str) -> None:
    config = box.config(env)
    app_process.stop(config)
    app_process.start(config, resolve_app_environment(config))
    app_process.wait_for_pid_file(config, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(config.service.base_url + config.health.api_path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{env} did not come back after a restart; see {config.service.startup_log}")


# --- driving the flows ----------------------------------------------------------------------------------


def deploy(env: str, ref: str, approvals: list[dict[str, str]] | None = None, **kwargs: Any) -> str:
    from flows.production_deployment import production_deployment

    approver = None
    if env == "production" and approvals != []:
        approver = Approver(list(approvals or APPROVERS))
        approver.start()
    try:
        return production_deployment(environment=env, ref=ref, **kwargs)
    finally:
        if approver is not None:
            approver.answers.clear()  # a deploy that ended before its approvals leaves them unasked
            approver.join(timeout=5)


def rollback(env: str, **kwargs: Any) -> str:
    from flows.rollback import rollback as flow

    return flow(environment=env, **kwargs)


def bring(box: Sandbox, env: str, ref: str) -> None:
    """Make `env` serve `ref`. A fault release's migrations are unknown to the releases before it,
    so a live one is rolled back by hand first; production takes only what staging serves."""
    ledger = ledger_of(box, env)
    for _ in range(4):
        if live_sha(box, env) == box.sha(ref):
            return
        live = ledger.last_succeeded(env)
        if live is not None and live.ref.startswith("faults/") and live.ref != ref:
            rollback(env, reason="test setup: back to a known release", allow_data_loss=True)
            continue
        if env == "production":
            bring(box, "staging", ref)
        deploy(env, ref)
    assert live_sha(box, env) == box.sha(ref), f"{env} could not be brought to {ref}"


def live_sha(box: Sandbox, env: str) -> str:
    return str(state(box, env)["sha"])


def ledger_of(box: Sandbox, env: str) -> Ledger:
    return Ledger.for_state_dir(box.config(env).state_dir)


@contextmanager
def edited(box: Sandbox, env: str, edit: Callable[[str], str]) -> Iterator[None]:
    path = box.environments / f"{env}.toml"
    original = path.read_text()
    edited_text = edit(original)
    assert edited_text != original, "the edit changed nothing"
    path.write_text(edited_text)
    try:
        yield
    finally:
        path.write_text(original)


def without_rehearsal(text_: str) -> str:
    return text_.replace("migration_rehearsal = true", "migration_rehearsal = false")


@contextmanager
def maintenance(box: Sandbox, env: str) -> Iterator[None]:
    """The app's own switch, as the environment file names it: the app answers 503 meanwhile."""
    config = box.config(env)
    run_app_command(box, env, config.service.maintenance_on_command)
    try:
        yield
    finally:
        run_app_command(box, env, config.service.maintenance_off_command)


def run_app_command(box: Sandbox, env: str, argv: list[str]) -> None:
    config = box.config(env)
    subprocess.run(expand_argv(argv, config), cwd=config.source.workspace, check=True, timeout=60,
                   env=child_env(resolve_app_environment(config)), capture_output=True)


# --- invariants -------------------------------------------------------------------------------------------


def backups(box: Sandbox, env: str) -> list[str]:
    directory = box.config(env).backups.directory
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def snapshot(box: Sandbox, env: str) -> dict[str, Any]:
    """What must not move when a deploy aborts: code, revision, schema and the backup folder."""
    return {**state(box, env), "backups": backups(box, env)}


def assert_one_line(message: str, step: str, cause: str, action: str) -> None:
    assert "\n" not in message, message
    assert message.startswith(f"{step}: "), message
    assert cause in message, message
    assert action in message, message


def assert_aborted(box: Sandbox, env: str, release: Release, step: str) -> None:
    """Ledger: terminal, nothing changed, no rollback of it ever started."""
    assert release.outcome == "aborted" and release.failed_step == step, (release.outcome, release.failed_step)
    assert not release.code_changed and not release.migration_started
    assert release.finished_at is not None
    assert not [r for r in ledger_of(box, env).all_releases(env) if r.rollback_of == release.id]


def rollback_of(box: Sandbox, env: str, release: Release) -> tuple[Release, list[str]]:
    """The one rollback of `release`, and its completed steps in order."""
    ledger = ledger_of(box, env)
    rows = [r for r in ledger.all_releases(env) if r.rollback_of == release.id]
    assert len(rows) == 1, f"{len(rows)} rollbacks of release {release.id}"
    return rows[0], [s.name for s in ledger.steps(rows[0].id) if s.status == "completed"]


def plan_of(box: Sandbox, env: str, rollback_row: Release) -> str:
    return next(s.detail for s in ledger_of(box, env).steps(rollback_row.id) if s.name == "choose-rollback-plan")


# --- #6 / #5 migration 2 of 3 fails --------------------------------------------------------------------------


def deploy_migration_that_fails_midway(box: Sandbox) -> tuple[dict[str, Any], MigrationFailed]:
    bring(box, "production", "v2")
    bring(box, "staging", MIGRATION_FAILS_MIDWAY)  # staging's data has no duplicated URL: all three apply
    assert state(box, "staging")["revision"] == "f003"
    before = snapshot(box, "production")
    # The rehearsal would catch it on a copy of production's data; off, the live migration meets it.
    with edited(box, "production", without_rehearsal):
        with pytest.raises(MigrationFailed) as caught:
            deploy("production", MIGRATION_FAILS_MIDWAY)
    return before, caught.value


def assert_midway_failure_undone(box: Sandbox, before: dict[str, Any], error: MigrationFailed,
                                 database_error: str) -> tuple[Release, Release, list[str]]:
    after = snapshot(box, "production")
    release = last_release(box, "production")
    assert release.backup_tag is not None
    assert after.pop("backups") == [*before.pop("backups"), release.backup_tag], "the backup is kept"
    assert after == before and after["revision"] == "0002"
    assert_healthy_on(box, "production", box.sha("v2"))
    assert_lock_free("production", ledger_of(box, "production"))
    assert release.outcome == "rolled_back" and release.failed_step == "run migrations"
    assert [m["revision"] for m in release.migrations] == ["f001", "f002", "f003"]
    assert release.code_changed and release.migration_started and release.restored_at is not None
    assert_one_line(str(error), "run migrations", database_error, "production is rolled back automatically")
    assert release.error == str(error)
    manifest = box.config("production").backups.directory / release.backup_tag / "manifest.json"
    assert json.loads(manifest.read_text())["revision"] == "0002"
    undo, steps = rollback_of(box, "production", release)
    assert undo.outcome == "succeeded" and undo.target_sha == box.sha("v2")
    return release, undo, steps


# --- #8 the backup fails ---------------------------------------------------------------------------------


def assert_backup_failure_changed_nothing(box: Sandbox, before: dict[str, Any], error: BackupFailed,
                                          step: str, cause: str, action: str) -> None:
    assert_one_line(str(error), step, cause, action)
    assert snapshot(box, "production") == before
    assert not [name for name in backups(box, "production") if name.endswith(".partial")]
    assert_healthy_on(box, "production", before["sha"])
    assert_lock_free("production", ledger_of(box, "production"))
    release = last_release(box, "production")
    assert_aborted(box, "production", release, step)
    assert release.backup_tag is None and release.backup_manifest is None, "recorded as a backup"
    assert release.error == str(error)
