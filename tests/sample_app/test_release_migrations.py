"""Each release's migrations against data seeded by the release before it, as a deploy meets them."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from .checkouts import Checkout, Database, MakeCheckout

PRODUCTION_COUNTS = {"jobs": 200, "applications": 400, "documents": 40, "outbox": 120, "user_sessions": 60}


def seeded_at_v2(make_checkout: MakeCheckout, database_url: str, profile: str) -> Checkout:
    checkout = make_checkout("v2", database_url)
    checkout.upgrade()
    checkout.seed(profile)
    return checkout


def test_v2_upgrade_downgrade_upgrade_keeps_data(
    make_checkout: MakeCheckout, database_url: str, database: Database
) -> None:
    checkout = make_checkout("v1", database_url)
    checkout.upgrade()
    checkout.seed("production")
    assert database.counts() == PRODUCTION_COUNTS
    checkout.switch("v2")
    checkout.upgrade()
    assert database.revision() == "0002"
    assert {"salary_min", "salary_max"} <= database.columns("jobs")
    assert "ix_jobs_company" in database.indexes("jobs")
    checkout.downgrade("0001")
    assert database.revision() == "0001"
    assert not {"salary_min", "salary_max"} & database.columns("jobs")
    assert "ix_jobs_company" not in database.indexes("jobs")
    assert "ix_jobs_source_url" in database.indexes("jobs")
    assert database.counts() == PRODUCTION_COUNTS
    checkout.upgrade()
    assert database.revision() == "0002"
    assert database.counts() == PRODUCTION_COUNTS
    assert database.scalar("SELECT count(*) FROM jobs WHERE company IS NULL") == 10


def test_v3_fails_on_production_data(
    make_checkout: MakeCheckout, database_url: str, database: Database
) -> None:
    """What a failed 0003 leaves behind, which decides what a rollback must repair.

    SQLite runs DDL outside transactions: ALTER TABLE ADD COLUMN is committed before the UPDATE
    opens a transaction; the failing CREATE UNIQUE INDEX rolls back only the UPDATE. The database
    stays at 0002 with an extra, empty canonical_url column, and re-running 0003 then fails on
    that column. PostgreSQL's DDL is transactional: the whole of 0003 is rolled back, the schema
    is exactly 0002's, and 0003 fails the same way again.
    """
    checkout = seeded_at_v2(make_checkout, database_url, "production")
    checkout.switch("v3")
    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"):
        checkout.upgrade()
    assert database.revision() == "0002"
    assert database.counts() == PRODUCTION_COUNTS
    assert "ux_jobs_canonical_url" not in database.indexes("jobs")
    if database.engine.dialect.name == "sqlite":
        assert "canonical_url" in database.columns("jobs")
        assert database.scalar("SELECT count(canonical_url) FROM jobs") == 0
        with pytest.raises(OperationalError, match="duplicate column name: canonical_url"):
            checkout.upgrade()
    else:
        assert "canonical_url" not in database.columns("jobs")
        with pytest.raises(IntegrityError, match="could not create unique index"):
            checkout.upgrade()
        assert "canonical_url" not in database.columns("jobs")
    assert database.revision() == "0002"


def test_v3_succeeds_on_staging_data(
    make_checkout: MakeCheckout, database_url: str, database: Database
) -> None:
    checkout = seeded_at_v2(make_checkout, database_url, "staging")
    checkout.switch("v3")
    checkout.upgrade()
    assert database.revision() == "0003"
    assert database.indexes("jobs")["ux_jobs_canonical_url"] is True
    assert database.scalar("SELECT count(*) FROM jobs WHERE canonical_url = lower(source_url)") == 20


def test_v4_migrates_production_without_losing_rows(
    make_checkout: MakeCheckout, database_url: str, database: Database
) -> None:
    checkout = seeded_at_v2(make_checkout, database_url, "production")
    checkout.switch("v4")
    checkout.upgrade()
    assert database.revision() == "0004"
    assert database.counts() == PRODUCTION_COUNTS
    assert database.scalar("SELECT count(DISTINCT canonical_url) FROM jobs") == 200
    assert database.scalar("SELECT count(*) FROM jobs WHERE canonical_url LIKE '%#dup-%'") == 5
    assert database.scalar("SELECT count(*) FROM jobs WHERE canonical_url = lower(source_url)") == 195
    assert "job_tags" in database.tables()


def test_v4_repairs_what_failed_v3_left(
    make_checkout: MakeCheckout, database_url: str, database: Database
) -> None:
    checkout = seeded_at_v2(make_checkout, database_url, "production")
    checkout.switch("v3")
    with pytest.raises(IntegrityError):
        checkout.upgrade()
    checkout.switch("v4")
    checkout.upgrade()
    assert database.revision() == "0004"
    assert database.counts() == PRODUCTION_COUNTS
    assert database.indexes("jobs")["ux_jobs_canonical_url"] is True


def test_v4_downgrades_to_v2_schema(
    make_checkout: MakeCheckout, database_url: str, database: Database
) -> None:
    checkout = seeded_at_v2(make_checkout, database_url, "production")
    checkout.switch("v4")
    checkout.upgrade()
    checkout.downgrade("0002")
    assert database.revision() == "0002"
    assert "canonical_url" not in database.columns("jobs")
    assert database.counts() == PRODUCTION_COUNTS
    assert "job_tags" not in database.tables()
