"""Server-side automations, applied idempotently (`make deploy` runs this).

When a deploy's process or its worker dies, no hook of ours can run: only the server sees the run
go Crashed (zombie detection from missed heartbeats). For every environment with both a deploy and
a rollback deployment, one automation starts `rollback/<env>` when a `production-deployment/<env>`
run crashes. The deploy's own on_crashed hook may start it too: the rollback is idempotent.

    python -m deployctl.automations      (with PREFECT_API_URL pointing at the server)
"""

from __future__ import annotations

import sys

from prefect.automations import Automation, EventTrigger, Posture, RunDeployment
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

DEPLOY_FLOW = "production-deployment"
ROLLBACK_FLOW = "rollback"


def automation_name(environment: str) -> str:
    return f"roll back {environment} when a deploy crashes"


def environments_with_rollback() -> dict[str, tuple[str, str]]:
    """environment -> (deploy deployment id, rollback deployment id)."""
    found: dict[str, tuple[str, str]] = {}
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    by_flow: dict[str, dict[str, str]] = {}
    for deployment in deployments:
        by_flow.setdefault(flows.get(deployment.flow_id, ""), {})[deployment.name] = str(deployment.id)
    for environment, deploy_id in by_flow.get(DEPLOY_FLOW, {}).items():
        rollback_id = by_flow.get(ROLLBACK_FLOW, {}).get(environment)
        if rollback_id:
            found[environment] = (deploy_id, rollback_id)
    return found


def apply() -> list[str]:
    applied = []
    for environment, (deploy_id, rollback_id) in sorted(environments_with_rollback().items()):
        name = automation_name(environment)
        try:
            Automation.read(name=name).delete()
        except (ObjectNotFound, ValueError):
            pass  # first time: nothing to replace
        Automation(
            name=name,
            description=f"A crashed deploy of {environment} is rolled back even when no hook could run.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Crashed"},
                match_related={"prefect.resource.id": f"prefect.deployment.{deploy_id}"},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[RunDeployment(
                source="selected",
                deployment_id=rollback_id,
                parameters={
                    "environment": environment,
                    "failed_run_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"},
                    "reason": "automatic: the deploy crashed (server automation)",
                },
            )],
        ).create()
        applied.append(name)
    return applied


if __name__ == "__main__":
    for line in apply():
        print(f"automation      {line}")
    sys.exit(0)
