"""Rolling a release across a fleet, batch by batch ([fleet] in the environment file).

    start-host-runs     a `host-release` run per host on the host's own queue, all at once (a deploy
                        does it in its prerequisites, once the release is resolved and is no noop);
                        each host's worker takes it and starts its process, which then stands by for
                        its turn
    wait-for-hosts      every host's run up and standing by (a deploy waits as phase 2 begins): a host
                        whose worker is gone is found before anything is changed, and no batch waits
                        on its processes' start
    roll-batch <n>      each host of the batch drained from the load balancer (its requests in flight
                        finish), given its turn (its run checks out, runs the canary, reloads, watches
                        the startup log, holds its health), then put back in rotation once the balancer's
                        own check sees it up

The turn is given, and a run whose turn will not come is stood down, through the deploy's ledger record,
which every host's run reads already.

The batches run one after the other; a batch that fails stops the rollout there, its failed hosts left
out of rotation, and the deploy fails (so its rollback returns every host). A host's run is watched,
never waited on blindly: a run no worker takes within `start_timeout_seconds`, or whose worker stops
polling its queue for `worker_silence_seconds` (killed, or its machine gone), is lost: it is cancelled
and the host counts as failed, in an unknown state that the rollback must bring back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled
from prefect.utilities.asyncutils import run_coro_as_sync

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError, ServiceError
from deployments.fleet import HostConfig
from deployments.logs import run_log
from tasks.load_balancer import HAProxy, LoadBalancer, ServerState
from tasks.steps import change_step, current_release, read_step
from tasks.waiting import wait_until

HOST_FLOW = "host-release"
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class HostRun:
    host: str
    ok: bool
    detail: str
    run_name: str = ""

    def describe(self) -> str:
        return f"{self.host}: {self.detail}"


class FleetError(DeployError):
    pass


def load_balancer(config: EnvironmentConfig) -> LoadBalancer:
    assert config.fleet is not None
    balancer = config.fleet.load_balancer
    return HAProxy(balancer.socket, balancer.backend, step=f"load balancer ({config.name})")


def roll_fleet(config: EnvironmentConfig, sha: str, release_id: int, runs: dict[str, UUID | None],
               rollback: bool = False, environment_key: str | None = None, waited_for: bool = False) -> list[HostRun]:
    """Every host onto `sha`, batch by batch; raises on the first batch that fails. `runs`: the hosts'
    runs, started (and stood down if need be) by the caller's `hosts_standing_by`; `waited_for`: the
    caller saw them all standing by (wait_for_hosts) before it changed anything, else that is waited
    for here. `environment_key`: with [dependencies], the release environment a rollback makes live
    again on each host."""
    assert config.fleet is not None
    rollout = config.fleet.rollout
    done: list[HostRun] = []
    batches = [[h.name for h in batch] for batch in config.fleet.batches()]
    if rollback:
        batches = out_of_rotation_first(config, batches)
    if not waited_for:
        wait_for_hosts(config, runs, rollback)
    for number, batch in enumerate(batches, start=1):
        if number > 1 and rollout.pause_seconds:
            run_log().info("Pausing %g s before batch %d of %d.", rollout.pause_seconds, number, len(batches))
            time.sleep(rollout.pause_seconds)
        name = f"{'roll-back' if rollback else 'roll'}-batch-{number}"
        done += roll_batch.with_options(name=name)(config, {host: runs[host] for host in batch}, sha,
                                                   release_id, rollback, environment_key)
    return done


# Before its turn a deploy's run may stand by through the phases ahead of the rollout (the rest of the
# prerequisites, the backup, the migrations), besides the batches before its own and the approvals; the
# deploy or rollback whose record it reads ending stands it down sooner.
PHASES_BEFORE_ROLLOUT_SECONDS = 7200.0


def standby_bound(config: EnvironmentConfig, rollback: bool) -> float:
    """How long a host's run may stand by for its turn: every batch before it, the start of its process,
    and the phases before the rollout: for a deploy the approvals' window included, for a rollback
    the database's undoing and the decision it may wait for."""
    assert config.fleet is not None
    rollout = config.fleet.rollout
    # A rollback's runs stand by while it undoes the database, which may wait for a decision.
    before = PHASES_BEFORE_ROLLOUT_SECONDS + (config.rollback.decision_timeout_seconds if rollback else
                                              config.approvals.timeout_seconds if config.requires_approval else 0)
    return (len(config.fleet.batches()) * (rollout.host_timeout_seconds + rollout.pause_seconds)
            + rollout.start_timeout_seconds + before)


def hosts_standing_by(config: EnvironmentConfig, sha: str, release_id: int, wanted: bool = True,
                      **how: Any) -> AbstractContextManager[dict[str, UUID | None] | None]:
    """`standing_by` for a fleet, when `wanted` (a dry run, or a rollback leaving the code as it is, is
    not); None for one host."""
    if config.fleet is None or not wanted:
        return nullcontext()
    return standing_by(config, sha, release_id, **how)


@contextmanager
def standing_by(config: EnvironmentConfig, sha: str, release_id: int, rollback: bool = False,
                runs: dict[str, UUID | None] | None = None,
                environment_key: str | None = None) -> Iterator[dict[str, UUID | None]]:
    """Every host's run started (`runs` when given), standing by for its turn; on the way out, each run
    whose turn never came is stood down (it ends Cancelled, having changed nothing)."""
    assert config.fleet is not None
    if runs is None:
        runs = start_standing_by(config, sha, release_id, rollback, environment_key)
    try:
        yield runs
    finally:
        stand_down_all(runs, release_id, "the deploy stopped before this host's turn")


def start_standing_by(config: EnvironmentConfig, sha: str, release_id: int, rollback: bool = False,
                      environment_key: str | None = None) -> dict[str, UUID | None]:
    """Every host's run started, to stand by for its turn; the caller stands them down (stand_down_all)
    if it stops before their turns."""
    _recorded(config)
    return start_host_runs(config, sha, release_id, rollback, standby_bound(config, rollback), environment_key)


class HostsStarting:
    """A deploy's `start_standing_by`, submitted: the hosts' runs are created on their queues while the
    deploy goes on with its checks, and their processes start sooner. `runs()` waits for them, bounded."""

    def __init__(self, config: EnvironmentConfig, sha: str, release_id: int) -> None:
        _recorded(config)
        self.config, self.release_id = config, release_id
        self.future = start_host_runs.submit(config, sha, release_id, False, standby_bound(config, False))

    def runs(self) -> dict[str, UUID | None]:
        """The hosts' runs, once created; raises what creating them raised (a step error, in the ledger),
        or a FleetError when that takes longer than the rollout's `start_timeout_seconds`."""
        assert self.config.fleet is not None
        bound = self.config.fleet.rollout.start_timeout_seconds
        self.future.wait(bound)
        if self.future.state.is_final():
            return self.future.result()
        raise FleetError(f"start host runs ({self.config.name})", f"creating the hosts' runs on the Prefect server "
                         f"took longer than {bound:g} s (rollout.start_timeout_seconds)",
                         "nothing was changed; check that the server answers (`prefect server` log), then deploy again")

    def stand_down(self, why: str) -> None:
        """The deploy stops before the rollout: each run created stands down. Runs whose creation failed
        part-way, or took past the bound, stand down by themselves once the deploy's run has ended."""
        assert self.config.fleet is not None
        self.future.wait(self.config.fleet.rollout.start_timeout_seconds)
        if self.future.state.is_completed():
            stand_down_all(self.future.result(), self.release_id, why)


def _recorded(config: EnvironmentConfig) -> None:
    if ledger_of_release() is None:  # turns are given through the record
        raise FleetError(f"roll fleet ({config.name})", "no ledger record is being written",
                         "a fleet is rolled by a deploy or a rollback, which write one")


def stand_down_all(runs: dict[str, UUID | None], release_id: int, why: str) -> None:
    """Each run whose turn has not come is stood down: it ends Cancelled, having changed nothing."""
    for host, run in runs.items():
        if run is not None and turn_of(ledger_of_release(), release_id, host, str(run)) is None:
            stand_down(host, run, why)


@change_step("start-host-runs")
def start_host_runs(config: EnvironmentConfig, sha: str, release_id: int, rollback: bool,
                    standby: float, environment_key: str | None = None) -> dict[str, UUID | None]:
    """Every host's run created on its host's queue (its id), to stand by for its turn. None for a host
    rolled in this process (no host-release deployment on the server), at its turn."""
    assert config.fleet is not None
    hosts = config.fleet.hosts
    started = run_coro_as_sync(_start_host_runs(config, hosts, sha, release_id, rollback, standby, environment_key))
    assert started is not None
    return {host.name: None if run is None else run.id for host, run in zip(hosts, started)}


async def _start_host_runs(config: EnvironmentConfig, hosts: list[HostConfig], sha: str, release_id: int,
                           rollback: bool, standby: float, environment_key: str | None) -> list[FlowRun | None]:
    """The runs created together, over one client: each is three calls to the server, which one after
    the other held the deploy up for seconds on a busy server. One event loop keeps the runs' links to
    this step apart (their keys are counted without a pause between reading and counting)."""
    async with get_client() as client:
        return list(await asyncio.gather(*(start_host_run(client, config, host, sha, release_id, rollback, standby,
                                                          environment_key) for host in hosts)))


@read_step("wait-for-hosts", retries=0)
def wait_for_hosts(config: EnvironmentConfig, runs: dict[str, UUID | None], rollback: bool) -> str:
    """Every host's run taken by its worker and its process up, standing by; or the rollout stops here,
    before any host is drained or changed."""
    assert config.fleet is not None
    waiting = {name: run for name, run in runs.items() if run is not None}
    took: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while waiting:
            for name, run in list(waiting.items()):
                current, lost = _not_standing_by(client, config, name, run, since_created=True)
                if lost is None and current.state is not None and current.state.is_running():
                    del waiting[name]
                    took[name] = _start_took(client, current)
                    run_log().info("%s: run %s standing by, %s.", name, current.name, took[name])
                    continue
                if lost is not None:
                    raise FleetError(f"wait for hosts ({config.name})", f"{name}: {lost}; nothing was changed on it",
                                     "no host was drained or changed; start the host's worker (`prefect worker "
                                     "start` as the README shows) and deploy again" if not rollback else
                                     "no host was changed by this rollback; start the host's worker, then run "
                                     "the rollback again")
            if waiting:
                time.sleep(POLL_SECONDS / 2)
    up = [f"{name} ({took[name]})" for name, run in runs.items() if run is not None]
    return f"{len(up)} host run(s) standing by: {', '.join(up)}" if up else "hosts rolled in this process"


def _start_took(client: Any, run: FlowRun) -> str:
    """How long the run took to come up, as the server's states say: from its creation, and from its
    worker taking it (what `start_timeout_seconds` bounds), to its process running."""
    running = run.state.timestamp if run.state is not None else None
    if running is None or run.created is None:
        return "up"
    said = f"up {(running - run.created).total_seconds():.0f} s after it was created"
    taken = [state.timestamp for state in client.read_flow_run_states(run.id) if state.is_pending()]
    if taken:
        said += f", {(running - taken[-1]).total_seconds():.0f} s after its worker took it"
    return said


def out_of_rotation_first(config: EnvironmentConfig, batches: list[list[str]]) -> list[list[str]]:
    """A rollback starts with the hosts the balancer has out of rotation (the failed batch's, left
    drained): rolling them first costs no capacity, and draining the hosts still serving before those
    are back could leave the balancer none."""
    out = [s.name for s in load_balancer(config).servers() if not s.in_rotation]
    rest = [[host for host in batch if host not in out] for batch in batches]
    first = [host for batch in batches for host in batch if host in out]
    return [batch for batch in [first, *rest] if batch]


@change_step("roll-batch")
def roll_batch(config: EnvironmentConfig, runs: dict[str, UUID | None], sha: str, release_id: int,
               rollback: bool, environment_key: str | None = None) -> list[HostRun]:
    assert config.fleet is not None
    fleet = config.fleet
    hosts = list(runs)
    step = f"roll {', '.join(hosts)} ({config.name})"
    balancer = load_balancer(config)
    gone = still_standing_by(config, runs)
    if gone:
        raise FleetError(step, "; ".join(gone), "no host of this batch was drained or changed; " + (
            "the rollback brings every host back" if not rollback else
            "start the host's worker, then run the rollback again"))
    others_up(config, balancer, hosts, rollback)
    for host in hosts:
        state = balancer.drain(host, fleet.load_balancer.drain_timeout_seconds)
        run_log().info("Drained %s from the load balancer (%s).", host, state.describe())
    outcomes: list[HostRun] = []
    turns: dict[str, float] = {}
    for host, run in runs.items():
        if run is None:  # no host-release deployment: this host is rolled here, now
            outcomes.append(roll_in_process(config, fleet.host(host), sha, release_id, rollback, environment_key))
        else:
            give_turn(host, run)
            turns[host] = time.monotonic()
    outcomes += [watch_host_run(config, fleet.host(host), run, turns[host])
                 for host, run in runs.items() if run is not None]
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise FleetError(step, "; ".join(outcome.describe() for outcome in failed),
                         "the failed host(s) stay out of rotation; " + (
                             "the rollback brings every host back" if not rollback else
                             "bring them back by hand (their worker's log says why), then run the rollback again"))
    # A rollback runs in maintenance when the app has one: every host then fails the balancer's check
    # until traffic resumes, after which `check_balancer` waits for them all.
    in_maintenance = rollback and bool(config.service.maintenance_on_command)
    for host in hosts:
        state = balancer.ready(host, fleet.load_balancer.ready_timeout_seconds, wait_up=not in_maintenance)
        run_log().info("%s is back in rotation (%s).", host, state.describe())
    return outcomes


def others_up(config: EnvironmentConfig, balancer: LoadBalancer, batch: list[str], rollback: bool) -> str:
    """Before a batch is drained: another host of the fleet up in the balancer, so that draining the
    batch leaves users a server. The batch before was put back without waiting for the balancer's
    check when a rollback runs in maintenance; this waits for it, up to the ready bound. A deploy that
    would drain the last host up stops instead; a rollback goes on (the fleet is down already) and
    says so."""
    assert config.fleet is not None
    fleet_hosts = {host.name for host in config.fleet.hosts}
    others = fleet_hosts - set(batch)
    if not others:
        return "the batch is the whole fleet"
    bound = config.fleet.load_balancer.ready_timeout_seconds

    def up() -> list[ServerState] | None:
        seen = [s for s in balancer.servers() if s.name in others and s.in_rotation]
        return seen or None

    try:
        seen = wait_until(up, bound, f"another host than {', '.join(batch)} to be up in the balancer", interval=0.1)
    except TimeoutError:
        states = ", ".join(s.describe() for s in balancer.servers() if s.name in fleet_hosts)
        if not rollback:
            raise FleetError(f"roll {', '.join(batch)} ({config.name})", f"no other host is up in the balancer "
                             f"({states}): draining {', '.join(batch)} would leave users no server",
                             "bring the other hosts up (`deployctl status` shows them), then deploy again") from None
        run_log().warning("No host but %s is up in the balancer (%s): draining them leaves no server until "
                          "they are back.", ", ".join(batch), states)
        return "no other host up"
    return ", ".join(s.describe() for s in seen)


def still_standing_by(config: EnvironmentConfig, runs: dict[str, UUID | None]) -> list[str]:
    """The hosts whose run is no longer standing by (its worker gone silent, or the run ended), each
    given up for lost; empty when every run still waits for its turn."""
    assert config.fleet is not None
    gone = []
    with get_client(sync_client=True) as client:
        for name, run in runs.items():
            if run is None:
                continue
            _, lost = _not_standing_by(client, config, name, run, since_created=False)
            if lost is not None:
                gone.append(f"{name}: {lost}; nothing was changed on it")
    return gone


def _not_standing_by(client: Any, config: EnvironmentConfig, name: str, run: UUID,
                     since_created: bool) -> tuple[FlowRun, str | None]:
    """The host's run as the server has it now, and why it will never take its turn (it ended, or is
    lost with its worker), in which case it is given up; None while it may still. `since_created`: the
    run's start bound counts from its creation (before it first stood by), else it is not counted."""
    assert config.fleet is not None
    current = client.read_flow_run(run)
    state = current.state
    waited = time.time() - current.created.timestamp() if since_created and current.created else 0.0
    lost = (f"its run {current.name} ended {state.name} before its turn: "
            f"{_first_line(state.message) or 'see the run in the UI'}"
            if state is not None and state.is_final() else
            _lost(client, current, config.fleet.host(name), waited, config.fleet.rollout))
    if lost is not None:
        _lose(client, config, config.fleet.host(name), run, lost)
    return current, lost


def _lose(client: Any, config: EnvironmentConfig, host: HostConfig, run: UUID, why: str) -> None:
    """A host's run given up for lost: said in the ledger, then cancelled."""
    give_up(config, host, run, why)
    _cancel(client, run, why)


@read_step("check-load-balancer", retries=0)
def check_balancer(config: EnvironmentConfig) -> str:
    """Every host in rotation, as the balancer's own check sees it (after a rollback resumed traffic)."""
    assert config.fleet is not None
    balancer, bound = load_balancer(config), config.fleet.load_balancer.ready_timeout_seconds
    names = [host.name for host in config.fleet.hosts]

    def all_up() -> list[ServerState] | None:
        seen = [s for s in balancer.servers() if s.name in names]
        return seen if len(seen) == len(names) and all(s.in_rotation for s in seen) else None

    seen = wait_until(all_up, bound, "the load balancer to see every host up", interval=0.2,
                      on_timeout=lambda: ServiceError(
                          f"check load balancer ({config.name})",
                          f"not every host is up {bound:g} s after traffic resumed: "
                          + ", ".join(s.describe() for s in balancer.servers() if s.name in names),
                          "check the hosts that are down (`deployctl status`); the balancer keeps them out of rotation"))
    return f"{len(seen)} hosts in rotation: " + ", ".join(s.describe() for s in seen)


async def start_host_run(client: Any, config: EnvironmentConfig, host: HostConfig, sha: str, release_id: int,
                         rollback: bool, standby: float, environment_key: str | None = None) -> FlowRun | None:
    """A `host-release` run on the host's own queue, standing by up to `standby` seconds for its turn;
    None when the server has no such deployment (one machine, no workers)."""
    parameters = {"environment": config.name, "host": host.name, "sha": sha, "release_id": release_id,
                  "rollback": rollback, "standby_seconds": standby,
                  **({"environment_key": environment_key} if environment_key else {})}
    try:
        run = await arun_deployment(f"{HOST_FLOW}/{config.name}", client=client, parameters=parameters, timeout=0,
                                    work_queue_name=host.queue, as_subflow=True)
    except ObjectNotFound:
        run_log().warning("No %s/%s deployment on this server: %s is rolled in this process at its turn.",
                          HOST_FLOW, config.name, host.name)
        return None
    run_log().info("%s: run %s on queue %s.", host.name, run.name, host.queue)
    return run


def roll_in_process(config: EnvironmentConfig, host: HostConfig, sha: str, release_id: int,
                    rollback: bool, environment_key: str | None = None) -> HostRun:
    from flows.host_release import host_release

    state = host_release(environment=config.name, host=host.name, sha=sha, release_id=release_id,
                         rollback=rollback, environment_key=environment_key or "", return_state=True)
    ok = state.is_completed()
    return HostRun(host.name, ok, str(state.result(raise_on_failure=False)) if ok else (state.message or state.name))


def watch_host_run(config: EnvironmentConfig, host: HostConfig, run: UUID, turn: float) -> HostRun:
    """Until the host's run ends, or is lost with its worker; bounded by the rollout's timeouts, counted
    from its turn (`turn`, a monotonic time)."""
    assert config.fleet is not None
    rollout = config.fleet.rollout
    started = turn
    with get_client(sync_client=True) as client:
        while True:
            current = client.read_flow_run(run)
            state = current.state
            waited = time.monotonic() - started
            if state is not None and state.is_final():
                if state.is_completed():
                    return HostRun(host.name, True, state.message or f"{current.name} completed", current.name)
                return HostRun(host.name, False, f"its run {current.name} ended {state.name}: "
                               f"{_first_line(state.message) or 'see the run in the UI'}", current.name)
            lost = _lost(client, current, host, waited, rollout)
            if lost is None and waited > rollout.host_timeout_seconds:
                lost = f"its run {current.name} did not end within {rollout.host_timeout_seconds:g} s"
            if lost is not None:
                _lose(client, config, host, run, lost)
                return HostRun(host.name, False, f"{lost}; its state is unknown", current.name)
            time.sleep(POLL_SECONDS)


def _lost(client: Any, run: FlowRun, host: HostConfig, waited: float, rollout: Any) -> str | None:
    state = run.state
    in_state = (max(0.0, time.time() - state.timestamp.timestamp())
                if state is not None and state.timestamp is not None else waited)
    polled = _last_polled(client, run)
    if state is not None and state.is_scheduled() and waited > rollout.start_timeout_seconds:
        seen = ("no worker has ever polled it" if polled is None
                else f"its worker last polled it {polled:.0f} s ago")
        return (f"no worker took its run {run.name} from queue {host.queue} within "
                f"{rollout.start_timeout_seconds:g} s ({seen}): is the worker on {host.name} running?")
    # A queue whose worker polled once but has been silent all along is not waited on to start_timeout.
    if (state is not None and state.is_scheduled() and polled is not None
            and min(polled, waited) > rollout.worker_silence_seconds):
        return (f"no worker took its run {run.name}: the worker on {host.name} last polled queue {host.queue} "
                f"{polled:.0f} s ago (gone: killed, or its host down)")
    # Pending: a worker took the run and is starting its flow process, which takes a while on a busy host;
    # that start has a bound of its own, counted from when the worker took it.
    if state is not None and state.is_pending() and in_state > rollout.start_timeout_seconds:
        return (f"its worker took its run {run.name} {in_state:.0f} s ago but the run's process has not "
                f"started (bound: start_timeout_seconds = {rollout.start_timeout_seconds:g}); see the worker's "
                f"log on {host.name}")
    # A worker busy starting a run does not poll meanwhile, and the server records polls a little late:
    # the run's own last change of state (the worker took it, or started it) counts as a sign of life too.
    if polled is not None and state is not None and state.timestamp is not None:
        polled = min(polled, in_state)
    if polled is not None and polled > rollout.worker_silence_seconds:
        return (f"its worker stopped polling queue {host.queue} {polled:.0f} s ago (gone: killed, or its host "
                f"down) while its run {run.name} was {state.name if state else 'unknown'}")
    return None


GIVEN_UP = "given-up [{host}]"


def give_up(config: EnvironmentConfig, host: HostConfig, run_id: UUID, why: str) -> None:
    """Said in the ledger, where the run looks before each change it makes: Prefect lets a cancelled
    run that a worker takes later still start, and it must then change nothing behind the rollback."""
    _said_to(GIVEN_UP.format(host=host.name), "failed", f"{run_id} {why}")


TURN = "turn [{host}]"
STAND_DOWN = "stand-down [{host}]"


def give_turn(host: str, run_id: UUID) -> None:
    """The host's standing-by run may go on: its host is drained."""
    _said_to(TURN.format(host=host), "completed", f"{run_id}")


def stand_down(host: str, run_id: UUID, why: str) -> None:
    """The host's standing-by run ends without changing anything: its turn will not come."""
    _said_to(STAND_DOWN.format(host=host), "completed", f"{run_id} {why}")


def ledger_of_release() -> Any:
    found = current_release()
    return None if found is None else found[0]


def _said_to(name: str, status: str, detail: str) -> None:
    found = current_release()
    if found is not None:
        ledger, release_id = found
        ledger.step_finished(ledger.step_started(release_id, name), status, detail[:2000])


def turn_of(ledger: Any, release_id: int, host: str, run_id: str) -> str | None:
    """What the deploy said to this host's run: "go", "stand down: <why>", or nothing yet."""
    if ledger is None:
        return None
    turn, down, lost = TURN.format(host=host), STAND_DOWN.format(host=host), GIVEN_UP.format(host=host)
    for step in ledger.steps(release_id):
        if not step.detail.startswith(run_id):
            continue
        if step.name == turn:
            return "go"
        if step.name in (down, lost):
            return f"stand down: {step.detail[len(run_id):].strip()}"
    return None


def given_up(ledger: Any, release_id: int, host: str, run_id: str) -> bool:
    """The deploy or rollback `release_id` gave this host's run `run_id` up for lost."""
    name = GIVEN_UP.format(host=host)
    return any(step.name == name and step.detail.startswith(run_id) for step in ledger.steps(release_id))


def _last_polled(client: Any, run: FlowRun) -> float | None:
    """Seconds since a worker last polled the run's queue; None when the server does not say."""
    if not run.work_queue_name:
        return None
    try:
        queue = client.read_work_queue_by_name(run.work_queue_name, work_pool_name=run.work_pool_name)
    except ObjectNotFound:
        return None
    if queue.last_polled is None:
        return None
    return max(0.0, time.time() - queue.last_polled.timestamp())


def _cancel(client: Any, run_id: UUID, why: str) -> None:
    try:
        client.set_flow_run_state(run_id, Cancelled(message=why[:500]), force=True)
    except Exception as exc:  # the host is failed either way; the run's state is only bookkeeping
        run_log().warning("Could not cancel run %s (%s).", run_id, exc)


def _first_line(message: str | None) -> str:
    text = (message or "").strip().removeprefix("Flow run encountered an exception: ")
    return text.splitlines()[0][:400] if text else ""


def fleet_problems(config: EnvironmentConfig, sha: str | None, step: str) -> list[str]:
    """What is wrong with the fleet as each host and the balancer see it (the watch's sample): a host
    unhealthy or serving another SHA, a host the balancer has out of rotation. Empty when all is well."""
    from tasks.health import assess

    assert config.fleet is not None
    problems = []
    for host in config.hosts:
        try:
            assess(host, sha, f"{step} [{host.host}]")
        except DeployError as exc:
            problems.append(f"{host.host} unhealthy: {exc.cause}")
    try:
        out = [s.describe() for s in load_balancer(config).servers()
               if s.name in {h.name for h in config.fleet.hosts} and not s.in_rotation]
    except ServiceError as exc:
        return [*problems, f"the load balancer did not answer: {exc.cause}"]
    if out:
        problems.append(f"out of the balancer's rotation: {', '.join(out)}")
    return problems


def fleet_status(config: EnvironmentConfig) -> list[dict[str, str]]:
    """What each host serves and how it is, as its own health answer and the balancer say."""
    from tasks.health import probe

    assert config.fleet is not None
    try:
        seen = {s.name: s for s in load_balancer(config).servers()}
    except ServiceError as exc:
        seen, balancer_error = {}, exc.cause
    else:
        balancer_error = ""
    rows = []
    for host in config.hosts:
        answer = probe(f"{host.service.base_url}{host.health.api_path}", host.health.timeout_seconds)
        body = answer.body or {}
        version = body.get("version") if isinstance(body.get("version"), str) else None
        server = seen.get(host.host)
        rows.append({"host": host.host, "address": host.service.base_url,
                     "serves": str(version)[:12] if version else "?",
                     "health": str(body.get("status", "healthy" if answer.ok else "")) or answer.describe(),
                     "balancer": server.describe() if server else (balancer_error or "not in its backend")})
    return rows
