"""What a deploy says to its hosts' runs through the ledger, and when it takes one for lost.

A run given up for lost (its worker went silent) is said so in the ledger, where the run looks before
each change it makes: Prefect lets a cancelled run that a worker takes later start anyway, and it must
then change nothing behind the rollback. A run standing by hears its turn, or its stand-down, there too."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, State
from prefect.states import Pending, Running, Scheduled

from deployments.fleet import HostConfig, RolloutConfig
from records.ledger import Ledger
from tasks.fleet import _lost, give_turn, give_up, given_up, stand_down, turn_of
from tasks.steps import recording


def test_a_run_given_up_for_lost_is_known_as_such_and_no_other(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    release = ledger.open_release(environment="production", ref="v2")
    lost, other = uuid4(), uuid4()
    host = HostConfig(name="web-2", address="127.0.0.12:8102", workspace=tmp_path)
    give_up(None, host, lost, "its worker stopped polling queue web-2 13 s ago")  # type: ignore[arg-type]
    assert not given_up(ledger, release.id, "web-2", str(lost))  # outside a recorded deploy: nothing written
    with recording(ledger, release.id):
        give_up(None, host, lost, "its worker stopped polling queue web-2 13 s ago")  # type: ignore[arg-type]
    assert given_up(ledger, release.id, "web-2", str(lost))
    assert not given_up(ledger, release.id, "web-2", str(other))
    assert not given_up(ledger, release.id, "web-3", str(lost))
    [step] = ledger.steps(release.id)
    assert (step.name, step.status) == ("given-up [web-2]", "failed") and "stopped polling" in step.detail
    ledger.engine.dispose()


# How a host's run is judged lost, state by state. The clocks are what matter here, so the queue's last poll
# is given rather than awaited from a real worker; tests/e2e/test_fleet.py kills a real one.

class _Queue:
    def __init__(self, polled_ago: float | None) -> None:
        self.last_polled = None if polled_ago is None else datetime.now(timezone.utc) - timedelta(seconds=polled_ago)


class _Client:
    def __init__(self, polled_ago: float | None) -> None:
        self.queue = _Queue(polled_ago)

    def read_work_queue_by_name(self, name: str, work_pool_name: str | None = None) -> _Queue:
        return self.queue


def _run(state: State) -> FlowRun:
    return FlowRun(name="shiny-mole", flow_id=uuid4(), state=state, work_queue_name="web-2",
                   work_pool_name="deploy-pool")


def _ago(state: State, seconds: float) -> State:
    state.timestamp = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    return state


ROLLOUT = RolloutConfig(start_timeout_seconds=30, worker_silence_seconds=20)
WEB2 = HostConfig(name="web-2", address="127.0.0.12:8102", workspace=Path("/srv/web-2"))


@pytest.mark.parametrize(("state", "waited", "polled_ago", "lost"), [
    # Scheduled: waits for a worker up to start_timeout, and says whether one ever polled.
    (lambda: _ago(Scheduled(), 10), 10, 1, None),
    (lambda: _ago(Scheduled(), 31), 31, None, "no worker took its run shiny-mole from queue web-2 within 30 s "
                                               "(no worker has ever polled it)"),
    (lambda: _ago(Scheduled(), 31), 31, 1, "(its worker last polled it 1 s ago)"),
    # ...but not on a queue whose worker, seen once, has been silent for worker_silence_seconds all along.
    (lambda: _ago(Scheduled(), 21), 21, 300, "the worker on web-2 last polled queue web-2 300 s ago"),
    (lambda: _ago(Scheduled(), 15), 15, 300, None),
    # Pending: taken; its process starting on a busy host is no loss until start_timeout from the take...
    (lambda: _ago(Pending(), 25), 45, 1, None),
    (lambda: _ago(Pending(), 35), 50, 1, "took its run shiny-mole 35 s ago but the run's process has not started"),
    # ...though a worker gone silent while it starts is.
    (lambda: _ago(Pending(), 25), 45, 25, "stopped polling queue web-2 25 s ago"),
    # Running: the worker's silence counts from the later of its last poll and the run's last change of state.
    (lambda: _ago(Running(), 5), 200, 60, None),
    (lambda: _ago(Running(), 40), 200, 25, "stopped polling queue web-2 25 s ago (gone: killed, or its host down) "
                                           "while its run shiny-mole was Running"),
    (lambda: _ago(Running(), 40), 200, 3, None),
])
def test_a_host_run_is_lost_only_past_the_bound_of_its_state(state, waited, polled_ago, lost) -> None:  # type: ignore[no-untyped-def]
    found = _lost(_Client(polled_ago), _run(state()), WEB2, waited, ROLLOUT)
    if lost is None:
        assert found is None
    else:
        assert found is not None and lost in found, found


def test_a_standing_by_run_hears_its_own_turn_or_stand_down_and_no_other(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    release = ledger.open_release(environment="production", ref="v2")
    web2, web3, stale = uuid4(), uuid4(), uuid4()
    host = HostConfig(name="web-3", address="127.0.0.13:8102", workspace=tmp_path)
    give_turn("web-2", web2)  # outside a recorded deploy: nothing is said
    assert turn_of(ledger, release.id, "web-2", str(web2)) is None
    with recording(ledger, release.id):
        assert turn_of(ledger, release.id, "web-2", str(web2)) is None  # nothing said yet: it waits
        give_turn("web-2", web2)
        stand_down("web-3", web3, "the rollout stopped before this host's turn")
        give_up(None, host, stale, "its worker stopped polling queue web-3 25 s ago")  # type: ignore[arg-type]
    assert turn_of(ledger, release.id, "web-2", str(web2)) == "go"
    assert turn_of(ledger, release.id, "web-3", str(web3)) == "stand down: the rollout stopped before this host's turn"
    assert turn_of(ledger, release.id, "web-3", str(stale)) == "stand down: its worker stopped polling queue web-3 25 s ago"
    # Another run of the same host, or the same run under another host, hears nothing.
    assert turn_of(ledger, release.id, "web-2", str(web3)) is None
    assert turn_of(ledger, release.id, "web-3", str(web2)) is None
    assert turn_of(None, release.id, "web-2", str(web2)) is None
    ledger.engine.dispose()


@pytest.mark.usefixtures("prefect_server")
def test_a_standing_by_run_whose_deploy_ended_stands_down_by_itself(tmp_path: Path) -> None:
    """A deploy that crashed says nothing to its hosts: a run standing by for it asks the server, every
    2 s, whether that deploy still runs, and stands down once it has ended; while it runs, it waits."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from flows.host_release import wait_for_turn
    from tasks.fleet import FleetError

    @flow(name="a-deploy")
    def a_deploy() -> None:
        return None

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with get_client(sync_client=True) as client:
        deploy = client.create_flow_run(a_deploy, state=Running())
        release = ledger.open_release(environment="production", ref="v2", flow_run_id=str(deploy.id))
        with pytest.raises(FleetError, match=r"no turn within 3 s"):  # the deploy runs: no turn, no stand-down
            wait_for_turn.fn(ledger, release.id, "web-2", 3)
        client.set_flow_run_state(deploy.id, Crashed(message="its process was killed"), force=True)
    said = wait_for_turn.fn(ledger, release.id, "web-2", 30)
    assert said == "the deploy or rollback that started it ended before its turn"
    ledger.engine.dispose()


@pytest.mark.usefixtures("prefect_server")
def test_every_host_run_is_created_at_once_each_on_its_queue_and_linked_to_the_step_apart(tmp_path: Path) -> None:
    """The hosts' runs are created together (one event loop, one client): each on its host's queue with
    its host's parameters, each linked to the deploy under a task run of its own. Links counted from
    several threads at once could share a key, and the server would then hand two hosts one link."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from tasks.fleet import HOST_FLOW, start_host_runs
    from tests.deployments.test_fleet_config import fleet_section, load

    config = load(tmp_path, fleet_section(5))
    assert config.fleet is not None
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    release = ledger.open_release(environment=config.name, ref="v2")
    pool = f"hosts-{uuid4().hex[:8]}"

    @flow(name="a-deploy")
    def a_deploy() -> dict:
        with recording(ledger, release.id):
            return start_host_runs(config, "ab" * 20, release.id, False, 60.0)

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment = client.create_deployment(flow_id=client.create_flow_from_name(HOST_FLOW), name=config.name,
                                              work_pool_name=pool, entrypoint="flows/host_release.py:host_release")
        try:
            runs = a_deploy()
            assert list(runs) == [host.name for host in config.fleet.hosts]
            created = {name: client.read_flow_run(run) for name, run in runs.items()}
            links = {name: client.read_task_run(run.parent_task_run_id) for name, run in created.items()}
        finally:
            client.delete_deployment(deployment)
            client.delete_work_pool(pool)
    for host in config.fleet.hosts:
        run = created[host.name]
        assert run.work_queue_name == host.queue and run.parameters["host"] == host.name
        assert run.parameters["release_id"] == release.id and run.parameters["standby_seconds"] == 60.0
    assert len({link.id for link in links.values()}) == 5
    assert len({link.dynamic_key for link in links.values()}) == 5
    assert len({link.flow_run_id for link in links.values()}) == 1
    [step] = ledger.steps(release.id)
    assert (step.name, step.status) == ("start-host-runs", "completed")
    ledger.engine.dispose()
