"""Production deployment approval: the team lead and the product owner, two different people.

The run pauses with a typed form (the Resume button in the UI, or `deployctl approve`). Open-source
Prefect has no user identity, so the approver's name is a required, self-declared field; it is
recorded in the ledger and the summary. One answer per pause: the run pauses again until every
required role has approved, and ends at the first rejection or when the time is up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from pydantic import Field, field_validator

from deployments.config import EnvironmentConfig
from deployments.errors import ApprovalRejected


class ApprovalDecision(RunInput):
    """Your decision on this production deployment."""

    approver: str = Field(min_length=2, max_length=80,
                          description="Your full name, as the ledger and the summary will record it.")
    role: Literal["team-lead", "product-owner"] = Field(
        description="The role you approve as. Production needs both roles, from two different people.")
    decision: Literal["approve", "reject"] = Field(
        description="approve lets the deployment continue; reject ends it with nothing changed.")
    comment: str = Field("", max_length=500, description="Why; shown in the summary and the ledger.")

    @field_validator("approver")
    @classmethod
    def _name(cls, value: str) -> str:
        value = " ".join(value.split())
        if len(value) < 2:
            raise ValueError("give your name")
        return value


@dataclass(frozen=True)
class Approval:
    approver: str
    role: str
    decision: str
    comment: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        return {"approver": self.approver, "role": self.role, "decision": self.decision,
                "comment": self.comment, "at": self.at}


def problem_with(answer: ApprovalDecision, given: list[Approval], required: list[str]) -> str | None:
    """Why this answer cannot count, or None when it does."""
    if answer.decision == "reject":
        return None
    if answer.role not in required:
        return f"role {answer.role} is not asked for here"
    if any(a.role == answer.role for a in given):
        return f"{answer.role} has already approved"
    if any(a.approver.casefold() == answer.approver.casefold() for a in given):
        return f"{answer.approver} has already approved as another role; a second person must approve"
    return None


def obtain_approvals(config: EnvironmentConfig, release_description: str) -> list[Approval]:
    """Pause until every required role approved; ApprovalRejected on a rejection or the timeout."""
    required = list(config.approvals.required_roles)
    logger = get_run_logger()
    given: list[Approval] = []
    deadline = time.monotonic() + config.approvals.timeout_seconds
    attempt = 0
    while len(given) < len(required):
        remaining = int(deadline - time.monotonic())
        waiting = [r for r in required if r not in {a.role for a in given}]
        if remaining <= 0:
            break
        attempt += 1
        logger.info("Waiting for approval from %s (%d s left). Resume the run in the UI or run: "
                    "deployctl approve <run id> --as NAME --role %s", " and ".join(waiting), remaining, waiting[0])
        form = ApprovalDecision.with_initial_data(description=_form_description(release_description, given, waiting))
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=2,
                                    key=f"approval-{attempt}")
        except FlowPauseTimeout:
            break
        problem = problem_with(answer, given, required)
        if problem is not None:
            logger.warning("Approval not counted: %s.", problem)
            continue
        approval = Approval(answer.approver, answer.role, answer.decision, answer.comment,
                            datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if answer.decision == "reject":
            raise ApprovalRejected("approve deployment", f"{answer.approver} ({answer.role}) rejected it"
                                   + (f": {answer.comment}" if answer.comment else ""),
                                   "nothing was changed; deploy again once the concern is addressed")
        logger.info("Approved by %s as %s.", approval.approver, approval.role)
        given.append(approval)
    if len(given) < len(required):
        missing = [r for r in required if r not in {a.role for a in given}]
        raise ApprovalRejected("approve deployment", f"no approval from {', '.join(missing)} within "
                               f"{config.approvals.timeout_seconds} s", "nothing was changed; deploy again when "
                               "the approvers are available, or raise approvals.timeout_seconds")
    return given


def _form_description(release: str, given: list[Approval], waiting: list[str]) -> str:
    done = "".join(f"\n- approved by **{a.approver}** as {a.role}" for a in given) or "\n- none yet"
    return (f"{release}\n\n### Approvals\nStill needed: **{', '.join(waiting)}**.{done}\n\n"
            "Your name and role are required. Reject with a comment to stop the deployment; nothing will change.")
