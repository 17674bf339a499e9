"""A fleet in an environment file: the hosts the app runs on, the load balancer in front of them, and
how a release rolls across them.

    [[fleet.hosts]]
    name = "web-1"                       # the load balancer's name for it (HAProxy: the server's name)
    address = "10.0.0.11:8102"           # where the app answers on that host, behind the balancer
    workspace = "/srv/jobapp/app"        # the app's checkout on that host
    work_queue = "web-1"                 # the queue of the deploy pool whose worker runs there (default: name)
    service = { pid_file = "...", env = { BIND = "10.0.0.11:8102" } }   # what differs from [service]

    [fleet.load_balancer]
    kind = "haproxy"
    socket = "/run/haproxy/admin.sock"   # its runtime API, on the host the deploy runs on
    backend = "app"

    [fleet.rollout]
    batch_size = 1                       # hosts at a time: a count, or "34%"
    canary_first = true                  # the first batch is one host, whatever batch_size says
    pause_seconds = 0                    # between batches

Without [fleet] the environment is one host, as it always was. With it, [source] workspace is the
deploy's own checkout on the host the deploy runs on: the release is checked out and migrated from
there, once, and [service] holds what every host shares (base_url is the balancer's address: the
phase-3 checks and the watch see the fleet as its users do).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deployments.config_base import FilePath, Model

HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ADDRESS = re.compile(r"^([^\s/:\[\]]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")
PERCENT = re.compile(r"^(\d{1,3})%$")


class HostConfig(Model):
    name: str = Field(description="the host's name, as the load balancer knows it (HAProxy: its server name)")
    address: str = Field(description="host:port where the app answers on that host, behind the balancer")
    workspace: FilePath = Field(description="the app's checkout on that host")
    work_queue: str = Field("", description="the deploy pool's queue its worker polls; default: the host's name")
    service: dict[str, Any] = Field(default_factory=dict, description=(
        "keys of [service] that differ on this host (pid_file, startup_log, env, ...); env is merged into "
        "[service] env, base_url defaults to http://<address>"))
    dependencies_directory: FilePath | None = Field(None, description=(
        "with [dependencies]: where this host keeps the release environments it builds; default "
        "<[dependencies] directory>-<name>, beside the deploy checkout's own"))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not HOST_NAME.fullmatch(value):
            raise ValueError("lower-case letters, digits, '.', '_' and '-', e.g. \"web-1\"")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not ADDRESS.fullmatch(value) or not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
            raise ValueError("host:port with a port from 1 to 65535, e.g. \"10.0.0.11:8102\" or \"[fd00::11]:8102\"")
        return value

    @property
    def queue(self) -> str:
        return self.work_queue or self.name


class LoadBalancerConfig(Model):
    kind: Literal["haproxy"] = Field("haproxy", description="haproxy: driven through its runtime API")
    socket: FilePath = Field(description="the runtime API's socket (HAProxy: `stats socket ... level admin`)")
    backend: str = Field(description="the backend whose servers are the hosts")
    drain_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="for a host's requests in flight to end")
    ready_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="for the balancer's check to see it up")


class RolloutConfig(Model):
    batch_size: int | str = Field(1, description="hosts rolled at a time: a count, or a percentage such as \"34%\"")
    canary_first: bool = Field(True, description="the first batch is one host, whatever batch_size says")
    pause_seconds: float = Field(0.0, ge=0, le=3600, description="between batches, once a batch holds its health")
    start_timeout_seconds: float = Field(120.0, gt=0, le=3600, description=(
        "for a host's worker to take its run, and again for the run's process to start once taken; "
        "past either the host is taken as unreachable"))
    host_timeout_seconds: float = Field(900.0, gt=0, le=7200, description="for a host's run to end")
    worker_silence_seconds: float = Field(60.0, gt=0, le=3600, description=(
        "a host whose worker has not polled its queue for this long is taken as gone, its run as lost"))

    @field_validator("batch_size", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # TOML's true would otherwise be taken as 1
            raise ValueError("a count (2) or a percentage (\"34%\"), not true or false")
        return value

    @field_validator("batch_size")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("at least 1 host at a time")
            return value
        found = PERCENT.fullmatch(value.strip())
        if not found or not 1 <= int(found.group(1)) <= 100:
            raise ValueError("a count (2) or a percentage from 1% to 100% (\"34%\")")
        return value.strip()

    def size(self, hosts: int) -> int:
        if isinstance(self.batch_size, int):
            return min(self.batch_size, hosts)
        return max(1, math.ceil(hosts * int(self.batch_size[:-1]) / 100))


class FleetConfig(Model):
    hosts: list[HostConfig] = Field(min_length=1)
    load_balancer: LoadBalancerConfig
    rollout: RolloutConfig = RolloutConfig()
    deploy_host: str = Field("", description=(
        "the host whose worker runs what is done once (prerequisites, approvals, backup, migrations, the "
        "rollback and the watch): the deploy, rollback and watch deployments go on its queue. Default: the "
        "pool's `default` queue, wherever its worker runs"))

    @model_validator(mode="after")
    def _deploy_host(self) -> FleetConfig:
        if self.deploy_host and self.deploy_host not in {h.name for h in self.hosts}:
            raise ValueError(f"deploy_host {self.deploy_host!r} is none of the hosts: "
                             f"{', '.join(h.name for h in self.hosts)}")
        return self

    @property
    def deploy_queue(self) -> str:
        return self.host(self.deploy_host).queue if self.deploy_host else ""

    @model_validator(mode="after")
    def _unique(self) -> FleetConfig:
        for what, values in (("name", [h.name for h in self.hosts]), ("address", [h.address for h in self.hosts]),
                             ("work_queue", [h.queue for h in self.hosts]),
                             ("workspace", [str(h.workspace) for h in self.hosts])):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"each host needs its own {what}; repeated: {', '.join(twice)}")
        return self

    def host(self, name: str) -> HostConfig:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def batches(self) -> list[list[HostConfig]]:
        """The hosts in the order they roll, batch by batch: the canary alone first, when asked."""
        rest = list(self.hosts)
        batches: list[list[HostConfig]] = []
        if self.rollout.canary_first and len(rest) > 1:
            batches.append([rest.pop(0)])
        size = self.rollout.size(len(self.hosts))
        while rest:
            batches.append(rest[:size])
            rest = rest[size:]
        return batches
