"""prefect.yaml names no environment: each of its deployments is registered once per environment file."""

from __future__ import annotations

import yaml

from deployctl.stack import PROJECT_DIR, render_deployments

TEMPLATE = PROJECT_DIR / "prefect.yaml"
FLOWS = ["flows/production_deployment.py:production_deployment", "flows/rollback.py:rollback",
         "flows/post_deploy_watch.py:post_deploy_watch"]
HOST_FLOW = "flows/host_release.py:host_release"


def test_the_template_names_no_environment() -> None:
    deployments = yaml.safe_load(TEMPLATE.read_text())["deployments"]
    assert [d["entrypoint"] for d in deployments] == [*FLOWS, HOST_FLOW]
    assert all(d["name"] == "{environment}" and d["parameters"]["environment"] == "{environment}" for d in deployments)


def test_every_flow_is_registered_for_every_environment_file() -> None:
    rendered = yaml.safe_load(render_deployments(TEMPLATE, ["qa", "eu-production"]))
    registered = [(d["entrypoint"], d["name"], d["parameters"]["environment"]) for d in rendered["deployments"]]
    assert registered == [(flow, env, env) for env in ("qa", "eu-production") for flow in FLOWS]
    assert all("{environment}" not in yaml.safe_dump(d) for d in rendered["deployments"])
    assert all(d["work_pool"]["name"] == "deploy-pool" for d in rendered["deployments"])
    assert rendered["pull"] == yaml.safe_load(TEMPLATE.read_text())["pull"]  # its templating left to Prefect
    assert "definitions" not in rendered


def test_the_host_flow_is_registered_only_for_fleets() -> None:
    rendered = yaml.safe_load(render_deployments(TEMPLATE, ["staging", "production"], fleets={"production": ""}))
    registered = [(d["entrypoint"], d["name"]) for d in rendered["deployments"]]
    assert registered == [*[(flow, "staging") for flow in FLOWS], *[(flow, "production") for flow in [*FLOWS, HOST_FLOW]]]
    assert {d["work_pool"]["work_queue_name"] for d in rendered["deployments"]} == {"default"}


def test_a_fleets_deploys_run_on_its_deploy_hosts_queue() -> None:
    rendered = yaml.safe_load(render_deployments(TEMPLATE, ["staging", "production"], fleets={"production": "web-1"}))
    queues = {(d["entrypoint"], d["name"]): d["work_pool"]["work_queue_name"] for d in rendered["deployments"]}
    assert {queues[(flow, "production")] for flow in FLOWS} == {"web-1"}
    assert {queues[(flow, "staging")] for flow in FLOWS} == {"default"}
    assert queues[(HOST_FLOW, "production")] == "default"  # each run is sent to its host's queue when started
