"""The same flow with both environments on PostgreSQL: pg_dump backups, rehearsal on a scratch copy."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from deployments.errors import PreflightError
from deployments.secrets import resolve_app_environment
from records.ledger import Ledger
from tests.flows.conftest import Approver, Sandbox, approval

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.usefixtures("prefect_server")]


def deploy(environment: str, ref: str, **kwargs):  # type: ignore[no-untyped-def]
    from flows.production_deployment import production_deployment

    return production_deployment(environment=environment, ref=ref, **kwargs)


def database_state(box: Sandbox, env: str) -> tuple[str, dict[str, list[str]], int, list[str]]:
    config = box.config(env)
    engine = create_engine(resolve_app_environment(config)[config.database.app_variable])
    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        schema = {t: sorted(c["name"] for c in inspect(conn).get_columns(t)) for t in inspect(conn).get_table_names()}
        jobs = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        scratch = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE '%rehearsal%'")).scalars().all()
    engine.dispose()
    return revision, schema, jobs, list(scratch)


def test_staging_deploy_on_postgres_takes_a_pg_dump_backup(pg_box: Sandbox) -> None:
    deploy("staging", "v2")
    revision, schema, _, scratch = database_state(pg_box, "staging")
    assert revision == "0002" and "salary_min" in schema["jobs"]
    assert scratch == [], "the rehearsal left its scratch database behind"
    release = Ledger.for_state_dir(pg_box.config("staging").state_dir).releases("staging")[0]
    assert release.outcome == "succeeded"
    manifest = release.backup_manifest or {}
    assert manifest["kind"] == "postgresql" and manifest["file"] == "database.dump"
    assert manifest["revision"] == "0001" and manifest["row_counts"]["jobs"] > 0
    assert "pg_dump" in manifest["tool_versions"]


def test_v3_migration_is_caught_by_the_rehearsal_on_production_data(pg_box: Sandbox) -> None:
    approver = Approver([approval("Dana Whitfield", "team-lead"), approval("Sam Okafor", "product-owner")])
    approver.start()
    deploy("production", "v2")
    approver.join()
    deploy("staging", "v3")  # staging's data has no duplicates: v3 migrates there
    assert database_state(pg_box, "staging")[0] == "0003"
    before = database_state(pg_box, "production")
    with pytest.raises(PreflightError) as caught:
        deploy("production", "v3")
    message = str(caught.value)
    assert message.startswith("test migrations: on a copy of production's data, alembic upgrade failed")
    assert "could not create unique index" in message and "production was not touched" in message
    assert database_state(pg_box, "production") == before
    release = Ledger.for_state_dir(pg_box.config("production").state_dir).releases("production")[0]
    assert release.outcome == "aborted" and release.failed_step == "test migrations"
    assert release.backup_tag is None and not release.code_changed
