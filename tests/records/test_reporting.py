"""What the summary artifact says: what changed, who approved, timings, every check, and why it failed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from records.ledger import Release, StepRecord
from records.reporting import DETAIL, Criterion, _outcome, summary_markdown, summary_text
from tasks.source import Commit

V2, V1 = "688dd2f0a0d11be9d3a4510f05b307fe2db2e07c", "04b09fd813f40c99a88f79813c1070a399b59706"
COMMIT = Commit(V2, "Salary insights: parse salary ranges", "Ana Author", datetime(2026, 1, 5, tzinfo=timezone.utc))
STEPS = [StepRecord("run-migrations", "completed", "database at 0002 after 0.15 s", 0.94),
         StepRecord("check-health", "completed", "a | b " + "x" * 200, 3.214)]
CRITERIA = [Criterion("Application health checks passing", True, "HTTP 200"),
            Criterion("Stakeholders notified of successful deployment", False, "not sent")]


def release(**changes: Any) -> Release:
    fields: dict[str, Any] = dict(
        environment="production", ref="v2", reason="salary insights", dry_run=False, target_sha=V2,
        previous_sha=V1, db_revision_before="0001", db_revision_after="0002", outcome="succeeded",
        flow_run_name=f"production: v2 ({V2[:12]})", backup_tag="pre-deployment-20260105-100000",
        backup_manifest={"kind": "sqlite", "row_counts": {"jobs": 800, "companies": 21}},
        migrations=[{"revision": "0002", "message": "Salary range on jobs", "has_downgrade": True}],
        approvals=[{"approver": "Dana Whitfield", "role": "team-lead", "decision": "approve", "comment": "tested",
                    "at": "2026-01-05T10:14:40+00:00"},
                   {"approver": "Sam Okafor", "role": "product-owner", "decision": "approve", "comment": "",
                    "at": "2026-01-05T10:15:04+00:00"}],
        timings={"verify-prerequisites": 23.75, "approvals": 386.27, "deployment-execution": 11.55},
        failed_step=None, error=None)
    fields.update(changes)
    return Release(**fields)


def test_a_succeeded_deploy_says_what_changed_who_approved_how_long_and_every_check() -> None:
    text = summary_markdown(release(), STEPS, CRITERIA, [COMMIT], ["team-lead", "product-owner"])
    assert text.startswith("# Deploy to production: **succeeded**\n\n**v2** `688dd2f0a0d1` over `04b09fd813f4` · "
                           "reason: salary insights · run production: v2 (688dd2f0a0d1)")
    assert "| code | `04b09fd813f4` | `688dd2f0a0d1` |" in text
    assert "| backup | | `pre-deployment-20260105-100000` (sqlite, 821 rows, verified) |" in text
    assert ("## What changed\n- `688dd2f0a0d1` Salary insights: parse salary ranges (Ana Author)\n"
            "- migration `0002`: Salary range on jobs") in text
    assert "- **Dana Whitfield** (team-lead) approved at 2026-01-05 10:14:40 UTC: tested" in text
    assert "- **Sam Okafor** (product-owner) approved at 2026-01-05 10:15:04 UTC\n" in text
    assert "| approvals | 6 min 26 s |" in text and "| verify-prerequisites | 23.8 s |" in text
    assert "| **total** | **7 min 2 s** |" in text
    assert "| Application health checks passing | yes | HTTP 200 |" in text
    assert "| Stakeholders notified of successful deployment | **NO** | not sent |" in text
    assert "| run-migrations | completed | 0.94 | database at 0002 after 0.15 s |" in text


def test_the_python_environment_a_release_brought_is_shown_beside_its_code_and_only_with_dependencies() -> None:
    assert "Python environment" not in summary_markdown(release(), STEPS, CRITERIA)
    text = summary_markdown(release(environment_before="a1b2c3d4e5f60718", environment_after="0f1e2d3c4b5a6978"),
                            STEPS, CRITERIA)
    assert "| Python environment | `a1b2c3d4e5f60718` | `0f1e2d3c4b5a6978` |" in text
    failed = summary_markdown(release(outcome="rolled_back", environment_before="a1b2c3d4e5f60718",
                                      environment_after="0f1e2d3c4b5a6978"), STEPS, CRITERIA)
    assert "| Python environment | `a1b2c3d4e5f60718` | `a1b2c3d4e5f60718` |" in failed
    assert "Python environment: a1b2c3d4e5f60718 -> 0f1e2d3c4b5a6978" in summary_text(
        release(environment_before="a1b2c3d4e5f60718", environment_after="0f1e2d3c4b5a6978"), CRITERIA)


def test_table_cells_stay_one_short_line() -> None:
    text = summary_markdown(release(), STEPS, CRITERIA, [COMMIT])
    row = next(line for line in text.splitlines() if line.startswith("| check-health |"))
    assert row.startswith("| check-health | completed | 3.21 | a \\| b xxx") and row.endswith("… |")
    assert len(row.split(" | ")[-1]) <= DETAIL + 4


def test_a_rejected_deploy_says_why_and_what_it_would_have_changed() -> None:
    rejected = release(outcome="aborted", approvals=[], db_revision_before=None, db_revision_after=None,
                       backup_tag=None, backup_manifest=None, migrations=[], failed_step="approve deployment",
                       error="approve deployment: Sam Okafor (product-owner) rejected it: not during the sale. "
                             "nothing was changed; deploy again once the concern is addressed")
    text = summary_markdown(rejected, STEPS, CRITERIA, [COMMIT], ["team-lead", "product-owner"])
    assert "# Deploy to production: **aborted**" in text
    assert "| code | `04b09fd813f4` | `04b09fd813f4` |" in text and "| backup | | none taken |" in text
    assert "## What the release would have changed\n- `688dd2f0a0d1`" in text
    assert "## Approvals\n- refused, or not given in time: see What went wrong" in text
    assert ("## What went wrong\n**approve deployment**: Sam Okafor (product-owner) rejected it: not during the "
            "sale. nothing was changed") in text
    assert "## Success criteria\n- not evaluated: nothing was deployed" in text and "| **NO** |" not in text
    assert _outcome(rejected).startswith("aborted: Sam Okafor (product-owner) rejected it: not during the sale.")


def test_the_artifact_description_names_the_approvers_of_a_success() -> None:
    assert _outcome(release()) == "succeeded, approved by Dana Whitfield, Sam Okafor"


def test_a_staging_deploy_needs_no_approval_and_unknown_commits_say_so() -> None:
    text = summary_markdown(release(environment="staging", approvals=[]), STEPS, CRITERIA, None, [])
    assert "## Approvals\n- not required" in text
    assert "- commits: not known" in text


def test_a_performance_that_was_not_measured_is_said_so_never_passed() -> None:
    from records.reporting import success_criteria, summary_text

    detail = 'not measured: error rate and response time of the release (monitoring.source = "none": ...)'
    steps = [*STEPS, StepRecord("check-performance", "completed", detail, 0.01)]
    criteria = success_criteria(release(), steps, notified=True)
    monitoring = next(c for c in criteria if c.name == "Monitoring systems showing normal metrics")
    assert monitoring.met is None and monitoring.evidence == detail
    assert "  NOT MEASURED  Monitoring systems showing normal metrics" in summary_text(release(), criteria)
    markdown = summary_markdown(release(), steps, criteria, [COMMIT], ["team-lead", "product-owner"])
    assert "| Monitoring systems showing normal metrics | **not measured** |" in markdown


def test_the_summary_gives_each_migrations_kind_and_the_linters_findings() -> None:
    migrations = [{"revision": "0002", "message": "Salary range on jobs", "has_downgrade": True, "kind": "expand",
                   "findings": ["require-concurrent-index-creation warns"]},
                  {"revision": "0003", "message": "Drop url", "has_downgrade": False, "kind": "destructive",
                   "findings": ["ban-drop-column allowed"]}]
    text = summary_markdown(release(migrations=migrations), STEPS, CRITERIA, [COMMIT], ["team-lead", "product-owner"])
    assert "- migration `0002`: Salary range on jobs (expand; require-concurrent-index-creation warns)\n" in text
    assert "- migration `0003`: Drop url (destructive; ban-drop-column allowed)" in text


def test_a_fleets_logs_are_judged_host_by_host_on_where_each_ended() -> None:
    from records.reporting import success_criteria

    def logs(steps: list[StepRecord]):  # type: ignore[no-untyped-def]
        return next(c for c in success_criteria(release(), steps, notified=True)
                    if c.name == "No critical errors in application logs")

    watched = [StepRecord(f"watch-startup-logs [{host}]", "completed", "no error pattern in 3 s", 3.0)
               for host in ("web-1", "web-2", "web-3")]
    clean = logs([*STEPS, *watched])
    assert clean.met is True and clean.evidence == "3 of 3 hosts' logs clean (web-1, web-2, web-3)"
    failed = logs([*STEPS, *watched, StepRecord("watch-startup-logs [web-2]", "failed", "Traceback", 1.0)])
    assert failed.met is False and failed.evidence == "2 of 3 hosts' logs clean; not on web-2"
    # One host: its one step, as before.
    single = logs([*STEPS, StepRecord("watch-startup-logs", "completed", "no error pattern in 3 s", 3.0)])
    assert single.met is True and single.evidence == "no error pattern in 3 s"
    assert logs([s for s in STEPS if s.name != "watch-startup-logs"]).met is False
