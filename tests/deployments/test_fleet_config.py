"""A fleet in an environment file: what [fleet] loads into and what it refuses, without any server. It pins
down the batches a release rolls in (the canary alone first, a count or a percentage of the hosts after
it), the one-line ConfigError naming the field and the fix for every bad host, load balancer or rollout
setting, the environment as seen on one host (`for_host`: the host's checkout, base URL, pid file and
env over [service], everything else the environment's own), the `hosts` property in roll order, a file
without [fleet] staying the one-host environment it always was, a host's default work queue, a host's
environment still serialized as its name, and a rollback rolling the hosts the balancer has out of
rotation first (`tasks.fleet.out_of_rotation_first`, against a fake balancer).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import ConfigError, InvalidInput
from tasks import fleet as fleet_tasks
from tasks.load_balancer import ServerState

PRODUCTION = Path(__file__).resolve().parents[2] / "deployments" / "production.toml"
FIX = "fix the field(s) named and run `deployctl check` again"


def fleet_section(hosts: int = 3, rollout: str = "batch_size = 2") -> str:
    """[fleet] with `hosts` hosts web-<n> on 127.0.0.1<n>:8102, each with its own checkout and pid file."""
    lines = ["", "[fleet.load_balancer]", 'socket = "lb.sock"', 'backend = "app"', "", "[fleet.rollout]", rollout]
    for n in range(1, hosts + 1):
        lines += ["", "[[fleet.hosts]]", f'name = "web-{n}"', f'address = "127.0.0.1{n}:8102"',
                  f'workspace = "h{n}/app"',
                  f'service = {{ pid_file = "h{n}/run/app.pid", env = {{ JOBAPP_BIND = "127.0.0.1{n}:8102" }} }}']
    return "\n".join(lines) + "\n"


def write_env(directory: Path, fleet: str | None = None, edit: Callable[[str], str] | None = None) -> Path:
    """The committed production file, edited as TOML text, with `fleet` appended, as production.toml."""
    text = PRODUCTION.read_text()
    if edit is not None:
        text = edit(text)
    path = directory / "production.toml"
    path.write_text(text + (fleet or ""))
    return path


def load(directory: Path, fleet: str | None = None, edit: Callable[[str], str] | None = None) -> EnvironmentConfig:
    return load_environment_file(write_env(directory, fleet, edit))


def error_of(directory: Path, fleet: str | None = None, edit: Callable[[str], str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(directory, fleet, edit)
    message = str(caught.value)
    assert message.endswith(FIX)
    return message


def names(batches: list[list]) -> list[list[str]]:
    return [[host.name for host in batch] for batch in batches]


@pytest.mark.parametrize(("hosts", "rollout", "expected"), [
    (5, "batch_size = 2", [["web-1"], ["web-2", "web-3"], ["web-4", "web-5"]]),
    (3, "", [["web-1"], ["web-2"], ["web-3"]]),
    (5, "batch_size = 2\ncanary_first = false", [["web-1", "web-2"], ["web-3", "web-4"], ["web-5"]]),
    (3, 'batch_size = "34%"', [["web-1"], ["web-2", "web-3"]]),
    (3, 'batch_size = "100%"', [["web-1"], ["web-2", "web-3"]]),
    (3, 'batch_size = "100%"\ncanary_first = false', [["web-1", "web-2", "web-3"]]),
    (3, 'batch_size = "1%"', [["web-1"], ["web-2"], ["web-3"]]),
    (3, "batch_size = 10", [["web-1"], ["web-2", "web-3"]]),
    (1, "batch_size = 2", [["web-1"]]),
    (1, "batch_size = 2\ncanary_first = false", [["web-1"]]),
], ids=["canary then pairs", "defaults: canary then one at a time", "no canary", "34% of 3 is 2",
        "100% after the canary", "100% without canary is one batch", "1% is still one host",
        "a count larger than the fleet", "one host alone", "one host alone without canary"])
def test_batches(tmp_path: Path, hosts: int, rollout: str, expected: list[list[str]]) -> None:
    config = load(tmp_path, fleet_section(hosts, rollout))
    assert config.fleet is not None
    assert names(config.fleet.batches()) == expected


@pytest.mark.parametrize(("rollout", "expected"), [
    ("batch_size = 0", "fleet.rollout.batch_size: at least 1 host at a time (got 0)"),
    ('batch_size = "0%"', "fleet.rollout.batch_size: a count (2) or a percentage from 1% to 100% (\"34%\") "
                          "(got '0%')"),
    ('batch_size = "150%"', "fleet.rollout.batch_size: a count (2) or a percentage from 1% to 100% (\"34%\") "
                            "(got '150%')"),
    ('batch_size = "abc"', "fleet.rollout.batch_size: a count (2) or a percentage from 1% to 100% (\"34%\") "
                           "(got 'abc')"),
], ids=["zero", "zero percent", "over a hundred percent", "not a number"])
def test_a_bad_batch_size_names_the_field_and_what_to_write(tmp_path: Path, rollout: str, expected: str) -> None:
    assert expected in error_of(tmp_path, fleet_section(rollout=rollout))


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('name = "web-2"', 'name = "Web-2"',
     "fleet.hosts.1.name: lower-case letters, digits, '.', '_' and '-', e.g. \"web-1\" (got 'Web-2')"),
    ('name = "web-2"', 'name = "web 2"',
     "fleet.hosts.1.name: lower-case letters, digits, '.', '_' and '-', e.g. \"web-1\" (got 'web 2')"),
    ('address = "127.0.0.12:8102"', 'address = "127.0.0.12"',
     'fleet.hosts.1.address: host:port with a port from 1 to 65535, e.g. "10.0.0.11:8102" or "[fd00::11]:8102" '
     "(got '127.0.0.12')"),
    ('name = "web-2"', 'name = "web-1"', "fleet: each host needs its own name; repeated: web-1"),
    ('address = "127.0.0.12:8102"', 'address = "127.0.0.11:8102"',
     "fleet: each host needs its own address; repeated: 127.0.0.11:8102"),
    ('name = "web-1"', 'name = "web-1"\nwork_queue = "web-2"',
     "fleet: each host needs its own work_queue; repeated: web-2"),
    ('name = "web-1"', 'name = "web-1"\nwork_queu = "q-1"',
     "fleet.hosts.0.work_queu: unknown key; remove it or rename it (did you mean 'work_queue'?)"),
    ('name = "web-1"', 'name = "web-1"\nport = 8102',
     "fleet.hosts.0.port: unknown key; remove it or rename it "
     "(known keys here: address, dependencies_directory, name, service, work_queue, workspace)"),
    ('service = { pid_file = "h1/run/app.pid"', 'service = { grace_seconds = -1, pid_file = "h1/run/app.pid"',
     "fleet host web-1: service: grace_seconds: Input should be greater than or equal to 0"),
    ('service = { pid_file = "h2/run/app.pid"', 'service = { pidfile = "x.pid", pid_file = "h2/run/app.pid"',
     "fleet host web-2: service: pidfile: Extra inputs are not permitted"),
    ('env = { JOBAPP_BIND = "127.0.0.12:8102" }', 'env = "JOBAPP_BIND=127.0.0.12:8102"',
     "fleet host web-2: service: env: Input should be a valid dictionary"),
    ('env = { JOBAPP_BIND = "127.0.0.12:8102" }', 'base_url = "127.0.0.12:8102"',
     "fleet host web-2: service: base_url: use scheme://host:port with no path, e.g. http://127.0.0.1:8102"),
], ids=["upper case name", "name with a space", "address without port", "same name", "same address",
        "same work queue", "misspelt key", "unknown key", "bad service override", "unknown service key",
        "service env not a table", "bad service base_url"])
def test_a_bad_host_names_the_field_and_what_to_write(tmp_path: Path, old: str, new: str, expected: str) -> None:
    section = fleet_section()
    assert old in section
    assert expected in error_of(tmp_path, section.replace(old, new, 1))


def test_two_hosts_on_one_checkout_are_refused_however_the_path_is_written(tmp_path: Path) -> None:
    section = fleet_section().replace('workspace = "h2/app"', 'workspace = "./h1/../h1/app"')
    assert f"fleet: each host needs its own workspace; repeated: {tmp_path / 'h1' / 'app'}" in error_of(
        tmp_path, section)


def test_a_fleet_needs_hosts(tmp_path: Path) -> None:
    without_hosts = fleet_section(hosts=0)
    assert "fleet.hosts: required and missing; add it" in error_of(tmp_path, without_hosts)
    assert "fleet.hosts: List should have at least 1 item" in error_of(tmp_path, "\n[fleet]\nhosts = []\n"
                                                                       + without_hosts)


def test_a_fleet_needs_its_load_balancer(tmp_path: Path) -> None:
    section = fleet_section().replace('[fleet.load_balancer]\nsocket = "lb.sock"\nbackend = "app"\n', "")
    assert "fleet.load_balancer: required and missing; add it" in error_of(tmp_path, section)


def test_host_is_never_written_in_the_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, fleet_section(), lambda s: s.replace(
        'name = "production"', 'name = "production"\nhost = "web-1"', 1))
    assert "host is set by the orchestrator for one host of [fleet]; remove it from the file" in message


def with_dependencies(text: str) -> str:
    text = text.replace('python = "../.venv/bin/python"\n', "", 1)
    text = text.replace('start_command = ["{bin}/gunicorn"', 'start_command = ["{python}", "{bin}/gunicorn"', 1)
    return text + '\n[dependencies]\ndirectory = "envs"\npython = "/usr/bin/python3"\n'


def test_each_host_of_a_fleet_with_dependencies_runs_its_own_live_environment(tmp_path: Path) -> None:
    fleet = fleet_section().replace('workspace = "h3/app"', 'workspace = "h3/app"\ndependencies_directory = "h3/envs"')
    config = load(tmp_path, edit=lambda text: with_dependencies(text) + fleet)
    assert config.dependencies is not None and config.dependencies.directory == tmp_path / "envs"
    web2, web3 = config.for_host("web-2"), config.for_host("web-3")
    # Never the deploy checkout's environments (the migrations make the release's live there before
    # any host's turn): beside them by default, or where the host says.
    assert web2.dependencies is not None and web2.dependencies.directory == tmp_path / "envs-web-2"
    assert web2.service.python == tmp_path / "envs-web-2" / "current" / "bin" / "python"
    assert web3.dependencies is not None and web3.dependencies.directory == tmp_path / "h3" / "envs"
    assert web3.service.python == tmp_path / "h3" / "envs" / "current" / "bin" / "python"
    assert web3.dependencies.install_command == config.dependencies.install_command


def test_a_host_interpreter_with_dependencies_and_a_host_directory_without_them_are_refused(tmp_path: Path) -> None:
    fleet = fleet_section().replace('service = { pid_file = "h2/run/app.pid"', 'service = { python = "/usr/bin/python3", pid_file = "h2/run/app.pid"')
    message = error_of(tmp_path, edit=lambda text: with_dependencies(text) + fleet)
    assert "fleet host web-2: service.python: leave it out with [dependencies]" in message
    fleet = fleet_section().replace('workspace = "h2/app"', 'workspace = "h2/app"\ndependencies_directory = "h2/envs"')
    message = error_of(tmp_path, fleet)
    assert "fleet host web-2: dependencies_directory is for [dependencies], which this file does not have" in message


def test_for_host_is_the_environment_on_that_host(tmp_path: Path) -> None:
    config = load(tmp_path, fleet_section())
    host = config.for_host("web-2")
    assert host.host == "web-2"
    assert host.source.workspace == tmp_path / "h2" / "app"
    assert host.service.base_url == "http://127.0.0.12:8102"
    assert host.service.pid_file == tmp_path / "h2" / "run" / "app.pid"
    assert host.service.env == {**config.service.env, "JOBAPP_BIND": "127.0.0.12:8102"}
    assert config.service.env["JOBAPP_BIND"] == "127.0.0.1:8102" and host.service.env["JOBAPP_ENV"] == "production"
    assert host.service.model_dump(exclude={"base_url", "pid_file", "env"}) == config.service.model_dump(
        exclude={"base_url", "pid_file", "env"})
    assert host.source.model_dump(exclude={"workspace"}) == config.source.model_dump(exclude={"workspace"})
    for same in ("name", "database", "health", "backups", "critical_paths", "watch", "rollback", "fleet",
                 "state_dir"):
        assert getattr(host, same) == getattr(config, same), same
    # The environment itself is left as it was.
    assert config.host == "" and config.source.workspace == tmp_path.parent / ".sandbox" / "production" / "app"
    assert config.service.base_url == "http://127.0.0.1:8102"


def test_a_hosts_own_base_url_is_kept(tmp_path: Path) -> None:
    section = fleet_section().replace('service = { pid_file = "h1/run/app.pid"',
                                      'service = { base_url = "http://web-1.internal:8102", '
                                      'pid_file = "h1/run/app.pid"')
    config = load(tmp_path, section)
    assert config.for_host("web-1").service.base_url == "http://web-1.internal:8102"
    assert config.for_host("web-2").service.base_url == "http://127.0.0.12:8102"


def test_a_host_without_service_differences_shares_service(tmp_path: Path) -> None:
    section = fleet_section(hosts=1).replace(
        'service = { pid_file = "h1/run/app.pid", env = { JOBAPP_BIND = "127.0.0.11:8102" } }\n', "")
    config = load(tmp_path, section)
    host = config.for_host("web-1")
    assert host.service.base_url == "http://127.0.0.11:8102"
    assert host.service.pid_file == config.service.pid_file and host.service.env == config.service.env


def test_for_an_unknown_host_names_the_hosts(tmp_path: Path) -> None:
    config = load(tmp_path, fleet_section())
    with pytest.raises(InvalidInput) as caught:
        config.for_host("web-9")
    assert "environment production: its [fleet] has no host 'web-9'. use one of: web-1, web-2, web-3" == str(
        caught.value)


def test_for_host_without_a_fleet_is_refused(tmp_path: Path) -> None:
    config = load(tmp_path)
    with pytest.raises(InvalidInput) as caught:
        config.for_host("web-1")
    assert "it has no [fleet], so no host 'web-1'" in str(caught.value)
    assert "leave the host out: the environment is one host" in str(caught.value)


def test_hosts_are_in_roll_order(tmp_path: Path) -> None:
    config = load(tmp_path, fleet_section(hosts=4))
    assert config.fleet is not None
    hosts = config.hosts
    assert [h.host for h in hosts] == [h.name for batch in config.fleet.batches() for h in batch]
    assert [h.host for h in hosts] == ["web-1", "web-2", "web-3", "web-4"]
    assert [h.service.base_url for h in hosts] == [f"http://127.0.0.1{n}:8102" for n in range(1, 5)]
    assert [h.source.workspace for h in hosts] == [tmp_path / f"h{n}" / "app" for n in range(1, 5)]


def test_a_file_without_fleet_loads_as_one_host(tmp_path: Path) -> None:
    for config in (load_environment_file(PRODUCTION), load(tmp_path)):
        assert config.fleet is None and config.host == "" and config.hosts == []
        assert config.service.base_url == "http://127.0.0.1:8102"
    assert load(tmp_path).service == load(tmp_path, fleet_section()).service


def test_work_queue_defaults_to_the_hosts_name(tmp_path: Path) -> None:
    section = fleet_section(hosts=2).replace('name = "web-2"', 'name = "web-2"\nwork_queue = "deploy-web-2"')
    config = load(tmp_path, section)
    assert config.fleet is not None
    first, second = config.fleet.hosts
    assert (first.work_queue, first.queue) == ("", "web-1")
    assert (second.work_queue, second.queue) == ("deploy-web-2", "deploy-web-2")


def test_a_hosts_environment_is_its_name_in_json(tmp_path: Path) -> None:
    host = load(tmp_path, fleet_section()).for_host("web-1")
    assert host.model_dump(mode="json") == "production"
    assert host.model_dump_json() == '"production"'


class FakeBalancer:
    def __init__(self, states: dict[str, str]) -> None:
        self.states = states

    def servers(self) -> list[ServerState]:
        return [ServerState(name, status, 0) for name, status in self.states.items()]


BATCHES = [["web-1"], ["web-2", "web-3"], ["web-4", "web-5"]]


@pytest.mark.parametrize(("states", "expected"), [
    ({"web-3": "DRAIN", "web-5": "MAINT"}, [["web-3", "web-5"], ["web-1"], ["web-2"], ["web-4"]]),
    ({"web-2": "MAINT", "web-3": "DOWN"}, [["web-2", "web-3"], ["web-1"], ["web-4", "web-5"]]),
    ({"web-1": "DRAIN"}, [["web-1"], ["web-2", "web-3"], ["web-4", "web-5"]]),
    ({"web-2": "UP 1/2", "spare": "DOWN"}, BATCHES),
    ({}, BATCHES),
], ids=["out hosts first, the rest in their batches", "a whole batch out", "the canary out",
        "up, or a server not in the fleet", "all in rotation"])
def test_a_rollback_rolls_the_hosts_out_of_rotation_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, states: dict[str, str], expected: list[list[str]]
) -> None:
    config = load(tmp_path, fleet_section(hosts=5))
    asked: list[EnvironmentConfig] = []

    def balancer(given: EnvironmentConfig) -> FakeBalancer:
        asked.append(given)
        return FakeBalancer({f"web-{n}": "UP" for n in range(1, 6)} | states)

    monkeypatch.setattr(fleet_tasks, "load_balancer", balancer)
    assert fleet_tasks.out_of_rotation_first(config, BATCHES) == expected
    assert asked == [config]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("batch_size = 2", "batch_size = true", 'fleet.rollout.batch_size: a count (2) or a percentage ("34%"), not true or false'),
    ('address = "127.0.0.12:8102"', 'address = "127.0.0.12:99999"', "a port from 1 to 65535"),
    ('env = { JOBAPP_BIND = "127.0.0.13:8102" }', 'env = { JOBAPP_BIND = "127.0.0.13:8102", JOBAPP_DATABASE_URL = "x" }',
     "fleet host web-3: service.env: JOBAPP_DATABASE_URL also given by [database]"),
], ids=["batch size true", "port out of range", "database variable on a host"])
def test_more_bad_fleet_input_is_refused_with_what_to_write(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert expected in error_of(tmp_path, fleet_section().replace(old, new, 1))


def test_the_deploy_host_is_one_of_the_hosts(tmp_path: Path) -> None:
    named = load(tmp_path, '\n[fleet]\ndeploy_host = "web-2"\n' + fleet_section())
    assert named.fleet is not None and named.fleet.deploy_queue == "web-2"
    assert load(tmp_path, fleet_section()).fleet.deploy_queue == ""  # type: ignore[union-attr]
    assert "deploy_host 'web-9' is none of the hosts: web-1, web-2, web-3" in error_of(
        tmp_path, '\n[fleet]\ndeploy_host = "web-9"\n' + fleet_section())


class ComingUp(FakeBalancer):
    """web-2 comes up on the balancer's second look, as after a rollback put it back in maintenance."""

    def __init__(self, states: dict[str, str]) -> None:
        super().__init__(states)
        self.looks = 0

    def servers(self) -> list[ServerState]:
        self.looks += 1
        if self.looks == 2:
            self.states["web-2"] = "UP"
        return super().servers()


def test_a_batch_is_drained_only_while_another_host_is_up(tmp_path: Path) -> None:
    config = load(tmp_path, fleet_section(hosts=3).replace('backend = "app"', 'backend = "app"\nready_timeout_seconds = 0.3'))
    # Another host up: at once.
    assert fleet_tasks.others_up(config, FakeBalancer({"web-1": "UP", "web-2": "UP", "web-3": "DRAIN"}), ["web-1"],
                                 rollback=False) == "web-2 UP, 0 in flight"
    # Put back without waiting for its check: waited for.
    coming = ComingUp({"web-1": "UP", "web-2": "DOWN", "web-3": "DOWN"})
    assert fleet_tasks.others_up(config, coming, ["web-1"], rollback=True) == "web-2 UP, 0 in flight"
    # None ever up: a deploy stops before draining the last host users have; a rollback goes on.
    down = FakeBalancer({"web-1": "UP", "web-2": "DOWN", "web-3": "DRAIN"})
    with pytest.raises(fleet_tasks.FleetError) as refused:
        fleet_tasks.others_up(config, down, ["web-1"], rollback=False)
    assert "no other host is up in the balancer" in str(refused.value)
    assert "draining web-1 would leave users no server" in str(refused.value)
    assert fleet_tasks.others_up(config, down, ["web-1"], rollback=True) == "no other host up"
    # The whole fleet in one batch has no other host to wait for.
    assert fleet_tasks.others_up(config, down, ["web-1", "web-2", "web-3"], rollback=False) == "the batch is the whole fleet"


def test_a_host_run_stands_by_through_the_approvals_window_only_when_approvals_are_required(tmp_path: Path) -> None:
    """A deploy starts its hosts' runs in the prerequisites: their bound for standing by covers the
    approvals' window (when approvals are required), the phases before the rollout and every batch; a
    rollback starts them before it undoes the database: theirs covers the decision it may wait for."""
    rollout = "batch_size = 2\nstart_timeout_seconds = 100\nhost_timeout_seconds = 500\npause_seconds = 10"
    approved = load(tmp_path, fleet_section(3, rollout), lambda t: t.replace("timeout_seconds = 3600", "timeout_seconds = 86400", 1))
    assert approved.requires_approval and approved.approvals.timeout_seconds == 86400
    batches = len(approved.fleet.batches())  # type: ignore[union-attr]
    assert batches == 2
    rolling = batches * (500 + 10) + 100
    before = fleet_tasks.PHASES_BEFORE_ROLLOUT_SECONDS
    assert fleet_tasks.standby_bound(approved, rollback=False) == rolling + before + 86400
    assert fleet_tasks.standby_bound(approved, rollback=True) == rolling + before + approved.rollback.decision_timeout_seconds
    (tmp_path / "open").mkdir()
    unapproved = load(tmp_path / "open", fleet_section(3, rollout),
                      lambda t: t.replace('required_roles = ["team-lead", "product-owner"]', "required_roles = []"))
    assert not unapproved.requires_approval
    assert fleet_tasks.standby_bound(unapproved, rollback=False) == rolling + before
