"""The invariants every failure test asserts (FAULTS.md): code, database, health, lock, ledger."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import httpx
from sqlalchemy import create_engine, inspect, text

from deployments.secrets import resolve_app_environment
from records.ledger import Ledger, Release
from tests.flows.conftest import Sandbox


def schema_fingerprint(url: str) -> str:
    """Tables, columns, indexes and unique constraints: what a migration changes."""
    engine = create_engine(url)
    shape: dict[str, Any] = {}
    with engine.connect() as conn:
        inspector = inspect(conn)
        for table in sorted(inspector.get_table_names()):
            shape[table] = {
                "columns": sorted((c["name"], str(c["type"]), bool(c["nullable"])) for c in inspector.get_columns(table)),
                "indexes": sorted((i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                                  for i in inspector.get_indexes(table)),
                "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            }
    engine.dispose()
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def state(box: Sandbox, env: str) -> dict[str, Any]:
    config = box.config(env)
    url = resolve_app_environment(config)[config.database.app_variable]
    engine = create_engine(url)
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.source.workspace, capture_output=True,
                          text=True, check=True).stdout.strip()
    # Row counts are left out on purpose: the critical-path checks write (a scrape adds jobs).
    return {"sha": head, "revision": revision, "schema": schema_fingerprint(url)}


def assert_healthy_on(box: Sandbox, env: str, sha: str) -> None:
    config = box.config(env)
    answer = httpx.get(config.service.base_url + config.health.api_path, timeout=5)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "ok", body
    assert body["version"] == sha and body["maintenance"] is False


def assert_lock_free(env: str, ledger: Ledger) -> None:
    from tasks.locks import deploy_lock

    probe = ledger.open_release(environment=env, ref="lock-probe")
    try:
        with deploy_lock(env, ledger, probe.id, wait_seconds=3):
            pass
    finally:
        ledger.finish(probe.id, "noop")


def last_release(box: Sandbox, env: str) -> Release:
    """The latest deploy (the lock probes of `assert_lock_free` aside)."""
    releases = Ledger.for_state_dir(box.config(env).state_dir).releases(env, limit=50)
    return next(r for r in releases if r.ref != "lock-probe")


def deployments_metric(box: Sandbox, env: str) -> dict[str, float]:
    """deploy_deployments{outcome} as the environment's metrics textfile states it now."""
    from prometheus_client.parser import text_string_to_metric_families

    from records.metrics import textfile_path

    path = textfile_path(box.config(env))
    figures: dict[str, float] = {}
    if not path.exists():
        return figures
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name == "deploy_deployments" and sample.labels.get("environment") == env:
                figures[sample.labels["outcome"]] = sample.value
    return figures


def assert_metrics_moved(box: Sandbox, env: str, before: dict[str, float], outcome: str) -> None:
    """FAULTS: the outcome counters moved: one more deploy with `outcome` than before."""
    after = deployments_metric(box, env)
    assert after.get(outcome, 0) == before.get(outcome, 0) + 1, (outcome, before, after)
