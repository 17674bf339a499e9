"""host-release: one host of a fleet onto a release, run by that host's own worker (its queue).

    prepare-environment [host]      [dependencies], a deploy's: the release's environment built on the host
                                    from a scratch checkout while the host still serves, so that its
                                    turn only switches it live
    wait-for-turn [host]            stand by (the process started) until the deploy drains the host and
                                    gives it its turn, through the ledger record; stood down, it ends
                                    Cancelled having changed nothing
    check-workspace [host]          no change made by hand in the host's checkout (a deploy would discard it)
    pull-release [host]             check out the SHA in the host's workspace
    switch-environment [host]       [dependencies]: the release's environment made live on the host,
                                    built there first when the host has not got it; old ones pruned
    check-canary [host]             the release on a spare port of the host, health and critical paths
    restart-application [host]      graceful reload; a release that cannot start leaves the old one serving
    watch-startup-logs [host]       no error pattern in the host's log for the grace time
    check-health [host]             the host serves the SHA, healthy, and holds so

The deploy starts one run per host at once, and gives each its turn once it has drained its batch from
the load balancer (tasks/fleet); the rollback starts the same with `rollback=true`: the previous release checked out and reloaded, its
health taken at the first good answer (in maintenance, if the rollback turned it on), no canary. A host
already serving the SHA from that checkout is left as it is. Every step is written to the deploy's
ledger record (`release_id`), named with the host.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from prefect import Task, flow
from prefect.client.schemas.objects import State
from prefect.states import Cancelled

from deployments.config import load_environment
from deployments.errors import DeployError
from deployments.logs import install_log_filters, run_log
from records.ledger import Ledger
from tasks.canary import check_canary
from tasks.dependencies import install_dependencies, prune_environments, switch_environment
from tasks.fleet import FleetError, given_up, turn_of
from tasks.release_environments import live_environment
from tasks.health import check_health, probe
from tasks.served_version import served_version
from tasks.service import log_offset, restart_application, watch_startup_logs
from tasks.source import add_worktree, check_workspace, current_sha, fetch, pull_release, remove_worktree
from tasks.steps import read_step, recording
from tasks.waiting import wait_until


def run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    what = "roll back to" if params.get("rollback") else "roll"
    return f"{params['environment']}/{params['host']}: {what} {str(params['sha'])[:12]}"


@flow(name="host-release", flow_run_name=run_name)
def host_release(environment: str, host: str, sha: str, release_id: int = 0, rollback: bool = False,
                 standby_seconds: float = 0, environment_key: str = "") -> str | State:
    """Put one host of a fleet on a release.

    Args:
        environment: The environment (a file in the environments directory) whose [fleet] has the host.
        host: The host's name in [fleet].
        sha: The release's full SHA, as the deploy or the rollback resolved it.
        release_id: The ledger record the steps are written to (0: none).
        rollback: Bring a previous release back: no canary, health at the first good answer.
        standby_seconds: Wait this long at most for the host's turn, given in the ledger record (0: go now).
        environment_key: With [dependencies], a rollback's environment to make live again (its key);
            a deploy makes live the one its checkout's dependency files key.
    """
    install_log_filters()
    config = load_environment(environment).for_host(host)
    ledger = Ledger.for_state_dir(config.state_dir) if release_id else None
    with recording(ledger, release_id) if ledger is not None else nullcontext():
        if standby_seconds and ledger is not None:
            if config.dependencies is not None and not rollback:
                on_host(prepare_environment, host)(config, sha, release_id)
            stood_down = on_host(wait_for_turn, host)(ledger, release_id, host, standby_seconds)
            if stood_down:
                return Cancelled(message=f"{host} was not rolled: {stood_down}")
        still_wanted(ledger, release_id, host)
        if rollback and _serves(config, sha):
            return f"{host} already serves {sha[:12]} from its checkout; left as it is"
        if not rollback:  # a change made by hand on this host would be overwritten silently
            on_host(check_workspace, host)(config)
        still_wanted(ledger, release_id, host)
        on_host(pull_release, host, "check-out-previous-release" if rollback else None)(config, sha)
        if config.dependencies is not None:
            on_host(switch_environment, host, "switch-back-environment" if rollback else None)(
                config, environment_key or None)
            pruned = prune_environments(config, keep={key for key in (environment_key, live_key(config)) if key})
            if pruned:
                run_log().info("%s: removed %d old environment(s): %s", host, len(pruned), ", ".join(pruned))
        if config.service.canary is not None and not rollback:
            on_host(check_canary, host)(config, sha)
        offset = log_offset(config)
        still_wanted(ledger, release_id, host)
        on_host(restart_application, host)(config)
        on_host(watch_startup_logs, host)(config, offset)
        if rollback:
            retries = max(1, int(config.health.deadline_seconds)) - 1
            report = on_host(check_health, host).with_options(retries=retries, retry_delay_seconds=1)(
                config, sha, allow_maintenance=True, held=False)
        else:
            report = on_host(check_health, host)(config, sha)
    run_log().info("%s serves %s: %s", host, sha[:12], report.describe())
    return f"{host} serves {sha[:12]}, healthy"


@read_step("prepare-environment", retries=0)
def prepare_environment(config: Any, sha: str, release_id: int) -> str:
    """The release's environment built in this host's directory from a scratch checkout of the release,
    before the host is drained; nothing the host serves changes."""
    fetch(config)
    tree = add_worktree(config, sha, config.state_dir / "worktrees" / f"{config.name}-{config.host}-{release_id}")
    try:  # what the prerequisites do on the deploy's own machine, here on the host's
        return f"{config.host}: {install_dependencies.fn(config, tree)}"
    finally:
        remove_worktree(config, tree)


@read_step("wait-for-turn", retries=0)
def wait_for_turn(ledger: Ledger, release_id: int, host: str, bound: float) -> str:
    """Until the deploy gives this run its turn (its host drained): "" then; the reason when it stands it
    down instead, or the deploy (or rollback) whose record it reads has ended."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = str(flow_run.id)
    # The run that writes the record: started from a subflow (the deploy's prerequisites), this run's
    # parent is that subflow, which ends long before the turns.
    deploy = ledger.get(release_id).flow_run_id or flow_run.parent_flow_run_id
    asked = [time.monotonic()]
    # One API client for the whole wait, which lasts as long as the approvals: a client built per check
    # (every 2 s) spent 24 ms of CPU on it, loading the CA bundle anew (1.3 ms with one client).
    with get_client(sync_client=True) as client:

        def said() -> str | None:
            answer = turn_of(ledger, release_id, host, run_id)
            if answer is None and deploy and time.monotonic() - asked[0] > 2:  # a crashed deploy says nothing
                asked[0] = time.monotonic()
                state = client.read_flow_run(deploy).state
                if state is not None and state.is_final():
                    return "stand down: the deploy or rollback that started it ended before its turn"
            return answer

        answer = wait_until(said, bound, f"its turn from ledger record {release_id}", interval=0.25,
                            on_timeout=lambda: FleetError(f"wait for turn ({host})", f"no turn within {bound:g} s",
                                                          "nothing was changed on this host; see the deploy's run"))
    return "" if answer == "go" else answer.removeprefix("stand down: ")


def still_wanted(ledger: Ledger | None, release_id: int, host: str) -> None:
    """Before each change: the deploy or rollback that started this run has not given it up for lost
    (its worker went silent, and a worker took it only later): such a run changes nothing."""
    from prefect.runtime import flow_run

    if ledger is None or not flow_run.id:
        return
    if given_up(ledger, release_id, host, str(flow_run.id)):
        raise FleetError(f"host release ({host})", f"this run was given up for lost by ledger record {release_id} "
                         "(its worker was silent too long) and is now too late", "nothing more is changed on this host "
                         "by it; `deployctl status` shows what the host serves")


def on_host(step: Task[..., Any], host: str, name: str | None = None) -> Task[..., Any]:
    """The step under its runbook name with the host's: the ledger and the UI tell hosts apart."""
    return step.with_options(name=f"{name or step.name} [{host}]")


def live_key(config: Any) -> str | None:
    live = live_environment(config)
    return live.key if live is not None else None


def _serves(config: Any, sha: str) -> bool:
    """The host serves `sha` from its checkout, as the app's own version source shows it (its health
    answer, version command or file, or processes younger than the checkout). In maintenance (a
    rollback's) the app answers 503 and still says what it serves."""
    try:
        if current_sha(config.source.workspace) != sha:
            return False
        answer = probe(f"{config.service.base_url}{config.health.api_path}", config.health.timeout_seconds)
        if answer.status_code not in (200, 503):
            return False
        return served_version(config, answer.body, f"host release ({config.host})").is_release(sha)
    except DeployError:
        return False
