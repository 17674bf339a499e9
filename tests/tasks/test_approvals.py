"""Which approval answers count (two roles, two different people, a rejection always ends it), and
the brief the approvers read in the Resume form."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments.secrets import MASK, register_secret
from tasks.approvals import Approval, ApprovalDecision, ReleaseBrief, form_description, problem_with
from records.ledger import StepRecord
from tasks.migrations import PendingRevision
from tasks.source import Commit, ResolvedRelease

BOTH = ["team-lead", "product-owner"]


def answer(approver: str, role: str, decision: str = "approve", comment: str = "") -> ApprovalDecision:
    return ApprovalDecision(approver=approver, role=role, decision=decision, comment=comment)


def given(approver: str, role: str) -> Approval:
    return Approval(approver, role, "approve", "", "2026-01-05T10:00:00+00:00")


def test_the_first_approval_of_a_required_role_counts() -> None:
    assert problem_with(answer("Ada Lovelace", "team-lead"), [], BOTH) is None


def test_a_second_person_in_the_other_role_counts() -> None:
    assert problem_with(answer("Grace Hopper", "product-owner"), [given("Ada Lovelace", "team-lead")], BOTH) is None


def test_a_role_that_is_not_required_does_not_count() -> None:
    assert problem_with(answer("Grace Hopper", "product-owner"), [], ["team-lead"]) == (
        "role product-owner is not asked for here")


def test_a_role_that_already_approved_does_not_count_twice() -> None:
    problem = problem_with(answer("Grace Hopper", "team-lead"), [given("Ada Lovelace", "team-lead")], BOTH)
    assert problem == "team-lead has already approved"


@pytest.mark.parametrize("same_person", ["Ada Lovelace", "ada lovelace", "ADA LOVELACE", "  Ada   Lovelace "])
def test_one_person_cannot_approve_as_both_roles(same_person: str) -> None:
    problem = problem_with(answer(same_person, "product-owner"), [given("Ada Lovelace", "team-lead")], BOTH)
    assert problem is not None
    assert problem.endswith("has already approved as another role; a second person must approve")


@pytest.mark.parametrize(("role", "before", "required"), [
    ("team-lead", [], BOTH),
    ("product-owner", [], ["team-lead"]),  # even from a role that is not asked for
    ("team-lead", [given("Ada Lovelace", "team-lead")], BOTH),  # even from a role already approved
])
def test_a_rejection_always_counts(role: str, before: list[Approval], required: list[str]) -> None:
    assert problem_with(answer("Ada Lovelace", role, "reject", "not this week"), before, required) is None


def test_the_approver_name_is_normalised() -> None:
    decision = answer("  Grace \t Brewster\n Hopper ", "product-owner", comment="ship it")
    assert decision.approver == "Grace Brewster Hopper"
    assert (decision.role, decision.decision, decision.comment) == ("product-owner", "approve", "ship it")


@pytest.mark.parametrize("name", ["", "A", " A ", "   ", "\t\n"])
def test_a_name_too_short_is_refused(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        answer(name, "team-lead")
    assert caught.value.errors()[0]["loc"] == ("approver",)


def test_a_name_made_of_spaces_says_give_your_name() -> None:
    with pytest.raises(ValidationError, match="give your name"):
        answer("  x  ", "team-lead")


@pytest.mark.parametrize(("field", "value"), [
    ("role", "admin"), ("role", "Team-Lead"), ("role", "team lead"),
    ("decision", "yes"), ("decision", "APPROVE"),
])
def test_role_and_decision_are_literals(field: str, value: str) -> None:
    fields = {"approver": "Ada Lovelace", "role": "team-lead", "decision": "approve", field: value}
    with pytest.raises(ValidationError) as caught:
        ApprovalDecision(**fields)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_long_name_and_comment_are_refused() -> None:
    with pytest.raises(ValidationError):
        answer("x" * 81, "team-lead")
    with pytest.raises(ValidationError):
        answer("Ada Lovelace", "team-lead", comment="y" * 501)


def test_an_approval_is_recorded_as_a_plain_dict() -> None:
    record = Approval("Ada Lovelace", "team-lead", "approve", "ok", "2026-01-05T10:00:00+00:00")
    assert record.as_dict() == {"approver": "Ada Lovelace", "role": "team-lead", "decision": "approve",
                                "comment": "ok", "at": "2026-01-05T10:00:00+00:00"}


# The brief: what the Resume form tells an approver before any log is read.

V2, V1 = "688dd2f0a0d11be9d3a4510f05b307fe2db2e07c", "04b09fd813f40c99a88f79813c1070a399b59706"
WHEN = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)


def brief(**changes: object) -> ReleaseBrief:
    fields: dict[str, object] = dict(
        environment="production",
        release=ResolvedRelease("v2", V2, "Salary insights: parse salary ranges", WHEN, V1),
        reason="salary insights",
        commits=[Commit(V2, "Salary insights: parse salary ranges", "Ana Author", WHEN)],
        dropped=[],
        migrations=[PendingRevision("0002", "Salary range on jobs", has_downgrade=True)],
        revision="0001", database="sqlite", backup_directory=Path("/srv/backups"),
        checks=[StepRecord("resolve-release", "completed", "v2 = 688dd2f0a0d1", 0.1),
                StepRecord("run-release-tests", "completed", "no test_command configured: skipped", 0.0),
                StepRecord("run-security-scan", "completed", "high 0, medium 0, low 5", 1.0),
                StepRecord("test-migrations", "completed", "upgrade, downgrade, upgrade passed on a copy of "
                           "production's database: Pending: 0002 (Salary range on jobs)", 7.0)],
        staging="`staging` is healthy at 10:00 UTC and serves `688dd2f0a0d1` (this release)",
        automatic_rollback=True,
    )
    fields.update(changes)
    return ReleaseBrief(**fields)  # type: ignore[arg-type]


def test_the_brief_opens_with_what_is_approved_and_the_approvals_still_needed() -> None:
    text = form_description(brief().markdown(), [given("Dana Whitfield", "team-lead")], ["product-owner"])
    blocks = text.split("\n\n")
    assert blocks[0] == ("### Deploy `v2` to production\n`688dd2f0a0d1` Salary insights: parse salary ranges, "
                         "replacing `04b09fd813f4`. Reason: salary insights")
    assert blocks[1] == "**Waiting for: product-owner.** Approved so far: Dana Whitfield (team-lead)."


def test_the_brief_says_what_changes_what_was_checked_the_backup_and_the_rollback_plan() -> None:
    text = brief().markdown()
    assert "1 migration to run, from revision `0001`:\n- `0002` Salary range on jobs" in text
    assert "1 commit since the live release:\n- `688dd2f0a0d1` Salary insights: parse salary ranges (Ana Author)" in text
    assert "- run-security-scan: high 0, medium 0, low 5" in text
    assert "- test-migrations: upgrade, downgrade, upgrade passed on a copy of production's database\n" in text
    assert "- run-release-tests: **skipped** (no test\\_command configured)" in text
    assert "resolve-release" not in text, "the ref has the headline; the check list keeps what proves quality"
    assert "**Staging**: `staging` is healthy" in text
    assert "**Backup first**: the production database (sqlite, revision `0001`) is copied to /srv/backups" in text
    assert ("**If it fails**: rolled back automatically (rollback/production): maintenance mode on, the database "
            "downgraded to `0001` with this release's own scripts (the backup restored if that fails), code back "
            "to `04b09fd813f4`") in text


def test_a_migration_without_downgrade_means_restoring_the_backup() -> None:
    text = brief(migrations=[PendingRevision("0003", "Unique canonical URLs", has_downgrade=False)]).markdown()
    assert "`0003` Unique canonical URLs: kind not read; rollback: **restore the backup** (no downgrade)" in text
    assert "the backup restored (a migration has no downgrade)" in text
    assert text.endswith("A restore that would discard rows written after the backup waits for a decision instead.")


def test_without_automatic_rollback_the_brief_says_to_roll_back_by_hand() -> None:
    text = brief(automatic_rollback=False, migrations=[]).markdown()
    assert "rollback.automatic is off: run rollback/production by hand" in text
    assert "No migration: the database stays at `0001`." in text and "the database untouched" in text


def test_a_deploy_back_in_time_says_so() -> None:
    newer = Commit("f" * 40, "Faster search", "Ana Author", WHEN)
    text = brief(commits=[], dropped=[newer, newer]).markdown()
    assert "Goes **back** 2 commits: the live release has them and this one does not (newest: `ffffffffffff`" in text


def test_commit_subjects_and_names_are_shown_as_written_and_secrets_never() -> None:
    register_secret("s3cr3t-token-value")
    text = brief(commits=[Commit(V2, "Use *bold* [links] and `ticks` with s3cr3t-token-value", "a_b", WHEN)],
                 reason="fix <script>").markdown()
    assert "Use \\*bold\\* \\[links\\] and \\`ticks\\` with " + MASK in text and "(a\\_b)" in text
    assert "Reason: fix \\<script\\>" in text and "s3cr3t-token-value" not in text


def test_many_commits_are_cut_after_eight() -> None:
    commits = [Commit(f"{i:040x}", f"change {i}", "Ana Author", WHEN) for i in range(12)]
    text = brief(commits=commits).markdown()
    assert "12 commits since the live release" in text and "- and 4 more" in text and "change 8" not in text


def test_commits_git_could_not_list_leave_a_gap_not_a_failed_deploy() -> None:
    assert "The commits since the live release could not be listed" in brief(commits=None).markdown()


def test_the_brief_says_how_a_postgresql_backup_is_proven_and_what_a_restore_takes() -> None:
    from tasks.backups import Manifest

    last = Manifest(tag="pre-deployment-20261201-101500", kind="postgresql", source="postgresql://app@db/app",
                    revision="0001", git_sha=None, run_id=None, file="database.dump",
                    row_counts={"alembic_version": 1, "jobs": 821}, seconds={"dump": 1.9, "restore": 2.34})
    text = brief(database="postgresql", last_backup=last).markdown()
    assert "proven by restoring it into a scratch database that must hold the same revision, schema and row counts" in text
    assert "The last backup (`pre-deployment-20261201-101500`, 822 rows) took 2.3 s to restore into a scratch copy." in text
    assert "took" not in brief().markdown().split("**Backup first**")[1].split("\n\n")[0], \
        "no figure is shown that no backup measured"


def test_the_brief_says_what_a_sqlite_restore_takes_from_the_last_copy() -> None:
    from tasks.backups import Manifest

    last = Manifest(tag="pre-deployment-20261201-101500", kind="sqlite", source="sqlite:///app.db", revision="0001",
                    git_sha=None, run_id=None, file="database.sqlite3", row_counts={"alembic_version": 1, "jobs": 821},
                    seconds={"dump": 0.42, "verify": 0.31})
    assert ("The last backup (`pre-deployment-20261201-101500`, 822 rows) was copied in 0.4 s and checked in 0.3 s; "
            "a restore copies it back the same way.") in brief(last_backup=last).markdown()


def test_the_brief_gives_the_worst_case_from_the_rehearsals_copy_of_the_database() -> None:
    from tasks.migrations import Rehearsal

    text = brief(rehearsal=Rehearsal("upgrade passed", [], copy_seconds=1.84)).markdown()
    assert "**Worst case**, a restore: the database as it is now was copied for the rehearsal in 1.8 s." in text
    pg = brief(database="postgresql", rehearsal=Rehearsal("upgrade passed", [], copy_seconds=3.2)).markdown()
    assert "was dumped and restored into a scratch database for the rehearsal in 3.2 s." in pg
    assert "Worst case" not in brief().markdown(), "no figure that nothing measured"
