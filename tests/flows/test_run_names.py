"""Run names are the runs list's deploy history: environment, ref and short SHA; what a rollback undoes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import flows.production_deployment as deploy_flow
import flows.rollback as rollback_flow
from records.ledger import Release
from tasks.rollback_plan import RollbackPlan

V2, V1 = "688dd2f0a0d11be9d3a4510f05b307fe2db2e07c", "04b09fd813f40c99a88f79813c1070a399b59706"


def with_parameters(monkeypatch: pytest.MonkeyPatch, module: Any, **parameters: Any) -> None:
    """The run's parameters, as `prefect.runtime` gives them to the flow's name function."""
    runtime = "flow_run" if module is rollback_flow else "current_run"
    monkeypatch.setattr(module, runtime, SimpleNamespace(parameters=parameters))


@pytest.mark.parametrize(("parameters", "sha", "name"), [
    ({"environment": "production", "ref": "v2"}, None, "production: v2"),
    ({"environment": "production", "ref": "v2"}, V2, "production: v2 (688dd2f0a0d1)"),
    ({"environment": "production", "ref": "688dd2f"}, V2, "production: 688dd2f0a0d1"),
    ({"environment": "staging", "ref": "main", "dry_run": True}, V2, "staging: main (688dd2f0a0d1) (dry run)"),
    ({"environment": "staging", "ref": "v2", "force": True}, V2, "staging: v2 (688dd2f0a0d1) (forced)"),
])
def test_a_deploy_is_named_after_what_it_deploys(monkeypatch: pytest.MonkeyPatch, parameters: dict[str, Any],
                                                 sha: str | None, name: str) -> None:
    with_parameters(monkeypatch, deploy_flow, **parameters)
    assert deploy_flow.run_name(sha) == name


@pytest.mark.parametrize(("parameters", "name"), [
    ({"environment": "production", "failed_run_id": "0f18560f-8df4-4c01", "to": "04b09fd813f4"},
     "rollback production: undo run 0f18560f"),
    ({"environment": "production", "failed_run_id": "", "to": "04b09fd813f4"}, "rollback production: back to 04b09fd813f4"),
    ({"environment": "production", "failed_run_id": "", "to": ""}, "rollback production: undo the live release"),
])
def test_a_rollback_is_named_before_its_plan(monkeypatch: pytest.MonkeyPatch, parameters: dict[str, Any],
                                             name: str) -> None:
    with_parameters(monkeypatch, rollback_flow, **parameters)
    assert rollback_flow.run_name() == name


def test_a_rollback_is_renamed_after_what_it_undoes_and_brings_back() -> None:
    plan = RollbackPlan(1, V2, V1, "0001", "downgrade", True, None, "undoing a release that succeeded")
    assert rollback_flow.planned_name("production", Release(ref="v2", target_sha=V2), plan) == (
        "rollback production: v2 688dd2f0a0d1 → 04b09fd813f4")
    assert rollback_flow.planned_name("production", Release(ref=V2[:7], target_sha=V2), plan) == (
        "rollback production: 688dd2f0a0d1 → 04b09fd813f4")
