"""Which approval answers count: two roles, two different people, and a rejection always ends it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.approvals import Approval, ApprovalDecision, problem_with

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
