"""Server-side automations, applied idempotently (`make deploy` and `make demo` run this).

When a deploy's process or its worker dies, no hook of ours can run: only the server sees the run
go Crashed (zombie detection from missed heartbeats). For every environment with both a deploy and
a rollback deployment, one automation starts `rollback/<env>` when a `production-deployment/<env>`
run crashes. The deploy's own on_crashed hook may start it too: the rollback is idempotent.

For every environment whose file names notification blocks, a second automation tells the
stakeholders through those blocks when a deploy, rollback or watch run of it crashes: the one
message of the communication plan no flow can send itself.

    python -m deployctl.automations      (with PREFECT_API_URL pointing at the server)
"""

from __future__ import annotations

import sys

from prefect.automations import Automation, EventTrigger, Posture, RunDeployment, SendNotification
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

DEPLOY_FLOW = "production-deployment"
ROLLBACK_FLOW = "rollback"
WATCH_FLOW = "post-deploy-watch"


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


def deployments_by_environment() -> dict[str, list[str]]:
    """environment -> ids of its deploy, rollback and watch deployments."""
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    found: dict[str, list[str]] = {}
    for deployment in deployments:
        if flows.get(deployment.flow_id) in (DEPLOY_FLOW, ROLLBACK_FLOW, WATCH_FLOW):
            found.setdefault(deployment.name, []).append(str(deployment.id))
    return found


def _replace(automation: Automation) -> None:
    try:
        Automation.read(name=automation.name).delete()
    except (ObjectNotFound, ValueError):
        pass  # first time: nothing to replace
    automation.create()


def apply_notifications() -> list[str]:
    from prefect.blocks.core import Block

    from deployments.config import load_environment
    from deployments.errors import DeployError

    applied = []
    for environment, deployment_ids in sorted(deployments_by_environment().items()):
        try:
            blocks = load_environment(environment).notifications.blocks
        except DeployError:
            continue  # a deployment without an environment file of this checkout
        name = f"tell {environment} stakeholders when a run crashes"
        if not blocks:
            try:
                Automation.read(name=name).delete()
            except (ObjectNotFound, ValueError):
                pass
            continue
        found = {}
        for block in blocks:
            try:
                found[block] = Block.load(block)._block_document_id
            except ValueError:
                applied.append(f"warning: notification block {block!r} of {environment} does not exist; "
                               "create it (prefect block create ...) and run `make deploy` again")
        actions = [SendNotification(
            block_document_id=block_id,
            subject=f"ALERT: a {environment} run crashed: {{{{ flow_run.name }}}}",
            body=(f"{{{{ flow.name }}}} run {{{{ flow_run.name }}}} on {environment} crashed: "
                  "{{ flow_run.state.message }}\nImpact:\n- step: unknown (the run's process died)\n"
                  f"- production: a deploy that changed something is rolled back by rollback/{environment}; "
                  "a crashed rollback or watch leaves the release as it was\n"
                  f"- next: read the run's logs; `deployctl status {environment}`"),
        ) for block_id in found.values()]
        if not actions:
            continue
        _replace(Automation(
            name=name,
            description=f"Any deploy, rollback or watch run of {environment} that crashes is reported.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Crashed"},
                match_related={"prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids]},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=actions,
        ))
        applied.append(name)
    return applied


def apply() -> list[str]:
    applied = []
    for environment, (deploy_id, rollback_id) in sorted(environments_with_rollback().items()):
        name = automation_name(environment)
        _replace(Automation(
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
        ))
        applied.append(name)
    return applied + apply_notifications()


if __name__ == "__main__":
    for line in apply():
        print(f"automation      {line}")
    sys.exit(0)
