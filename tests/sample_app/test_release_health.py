"""How each release's app behaves on the data it meets: healthy, unhealthy at once, or later."""

from __future__ import annotations

from .checkouts import Checkout, MakeCheckout

HEALTH = ("GET", "/api/health", None)


def deployed(make_checkout: MakeCheckout, database_url: str, profile: str, release: str) -> Checkout:
    """Seeded by v2, then upgraded to ``release``: the order a real deploy follows."""
    checkout = make_checkout("v2", database_url)
    checkout.upgrade()
    checkout.seed(profile)
    checkout.switch(release)
    checkout.upgrade()
    return checkout


def failing_services(health: dict[str, object]) -> set[str]:
    services = health["services"]
    assert isinstance(services, dict)
    return {name for name, service in services.items() if service["status"] != "ok"}


def test_v4_documents_fail_on_production_data(make_checkout: MakeCheckout, database_url: str) -> None:
    checkout = deployed(make_checkout, database_url, "production", "v4")
    health, letter, jobs = checkout.requests(
        HEALTH,
        ("POST", "/api/documents/cover-letter", {"job_id": 150, "applicant": "Ada Lovelace"}),
        ("GET", "/api/jobs", None),
    )
    assert health["status"] == 503
    assert health["body"]["status"] == "degraded"
    assert failing_services(health["body"]) == {"documents"}
    assert "'NoneType' object has no attribute 'lower'" in health["body"]["services"]["documents"]["detail"]
    assert health["body"]["database_revision"] == health["body"]["expected_revision"] == "0004"
    assert letter["status"] == 500
    assert jobs["status"] == 200 and jobs["body"]["total"] == 200


def test_v4_is_healthy_on_staging_data(make_checkout: MakeCheckout, database_url: str) -> None:
    checkout = deployed(make_checkout, database_url, "staging", "v4")
    health, letter = checkout.requests(
        HEALTH, ("POST", "/api/documents/cover-letter", {"job_id": 3, "applicant": "Ada Lovelace"})
    )
    assert health["status"] == 200, health
    assert health["body"]["status"] == "ok"
    assert letter["status"] == 200
    assert len(letter["body"]["sha256"]) == 64


def test_v3_code_is_healthy_where_its_migration_ran(make_checkout: MakeCheckout, database_url: str) -> None:
    checkout = deployed(make_checkout, database_url, "staging", "v3")
    [health] = checkout.requests(HEALTH)
    assert health["status"] == 200
    assert health["body"]["version"] == checkout.head()


def test_v5_degrades_as_its_match_cache_fills(make_checkout: MakeCheckout, database_url: str) -> None:
    checkout = deployed(make_checkout, database_url, "staging", "v5")
    checkout.extra_env["JOBAPP_MATCH_CACHE_SIZE"] = "16"
    analyses = [
        ("POST", "/api/analyze", {"text": f"posting {n} python", "profile": f"python skill{n}"})
        for n in range(200)
    ]
    *answers, after = checkout.requests(*analyses, HEALTH)
    statuses = [answer["status"] for answer in answers]
    # Each analysis stores a new key (the key holds the current second); 8 shards of 2 entries
    # fill at different moments, so failures rise until every miss is a 500.
    assert statuses[:2] == [200, 200]
    assert statuses.count(200) == 16
    assert statuses[-50:] == [500] * 50
    assert after["status"] == 503
    assert failing_services(after["body"]) == {"ai"}
    assert "MatchCacheFull" in after["body"]["services"]["ai"]["detail"]


def test_v5_passes_a_short_smoke_test_at_default_size(make_checkout: MakeCheckout, database_url: str) -> None:
    checkout = deployed(make_checkout, database_url, "staging", "v5")
    analyses = [("POST", "/api/analyze", {"job_id": n, "profile": "python postgresql"}) for n in range(1, 21)]
    before, *answers, after = checkout.requests(HEALTH, *analyses, HEALTH)
    assert before["status"] == after["status"] == 200
    assert {answer["status"] for answer in answers} == {200}
