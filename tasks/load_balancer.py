"""The load balancer in front of an app's hosts, as a rolling deploy needs it: take a host out
(drained: it gets no new requests and its in-flight ones finish), say when it is empty, put it back,
and show what the balancer sees of each host.

`LoadBalancer` is the interface; `HAProxy` drives HAProxy through its runtime API (the `stats socket`
of its configuration, admin level), with no reload and no file rewritten:

    set server <backend>/<server> state drain   no new connections; established ones go on
    show stat                                   per server: status, current sessions (scur)
    set server <backend>/<server> state ready   back in rotation (once its health check passes)

Every call is bounded: the socket by `timeout`, a drain by the wait for its sessions to end.
"""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deployments.errors import ServiceError
from tasks.waiting import wait_until


@dataclass(frozen=True)
class ServerState:
    name: str
    status: str  # as the balancer says it: UP, DOWN, DRAIN, MAINT, "UP 1/2"...
    sessions: int  # requests (connections) it is serving now
    address: str = ""

    @property
    def in_rotation(self) -> bool:
        return self.status.startswith("UP")

    def describe(self) -> str:
        return f"{self.name} {self.status}, {self.sessions} in flight"


class LoadBalancer(Protocol):
    def servers(self) -> list[ServerState]: ...

    def drain(self, server: str, timeout: float) -> ServerState: ...

    def ready(self, server: str, timeout: float, wait_up: bool = True) -> ServerState: ...


class HAProxy:
    """One backend of an HAProxy, through its runtime API socket."""

    def __init__(self, socket_path: Path, backend: str, timeout: float = 5.0, step: str = "load balancer") -> None:
        self.socket_path = socket_path
        self.backend = backend
        self.timeout = timeout
        self.step = step

    def command(self, line: str) -> str:
        """One runtime API command, its whole answer (the socket closes after it)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout)
                conn.connect(str(self.socket_path))
                conn.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise ServiceError(self.step, f"HAProxy's runtime API at {self.socket_path} did not answer "
                               f"{line.split()[0]!r} ({exc})", "check that HAProxy runs and that its "
                               "configuration has `stats socket <path> level admin`") from None
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> list[ServerState]:
        answer = self.command("show stat")
        rows = csv.DictReader(io.StringIO(answer.lstrip("# ")))
        found = [ServerState(row["svname"], row["status"], int(row["scur"] or 0), row.get("addr", "") or "")
                 for row in rows if row.get("pxname") == self.backend and row.get("svname") not in ("FRONTEND", "BACKEND")]
        if not found:
            raise ServiceError(self.step, f"HAProxy has no backend {self.backend!r} with servers",
                               "check the backend's name in the environment file against HAProxy's configuration")
        return found

    def server(self, name: str) -> ServerState:
        state = next((s for s in self.servers() if s.name == name), None)
        if state is None:
            raise ServiceError(self.step, f"HAProxy's backend {self.backend} has no server {name!r}",
                               "check the host's name in the environment file against HAProxy's configuration")
        return state

    def _set(self, server: str, state: str) -> None:
        self.server(server)  # an unknown server fails with its name, not with HAProxy's terse answer
        answer = self.command(f"set server {self.backend}/{server} state {state}").strip()
        if answer:
            raise ServiceError(self.step, f"HAProxy refused to set {self.backend}/{server} to {state}: {answer}",
                               "check HAProxy's runtime API level (admin) and the server's name")

    def drain(self, server: str, timeout: float) -> ServerState:
        """Out of rotation, then empty: no new requests go to it and those in flight have finished."""
        self._set(server, "drain")

        def empty() -> ServerState | None:
            state = self.server(server)
            return state if state.sessions == 0 else None

        return wait_until(empty, timeout, f"{server}'s requests in flight to finish", interval=0.05,
                          on_timeout=lambda: ServiceError(
                              self.step, f"{server} still had {self.server(server).sessions} request(s) in flight "
                                         f"{timeout:g} s after it was drained",
                              "look for long requests on it; it stays drained, out of rotation"))

    def ready(self, server: str, timeout: float, wait_up: bool = True) -> ServerState:
        """Back in rotation, once HAProxy's own health check sees it up (`wait_up=False`: at once, as
        in maintenance mode, when every host fails the check until traffic resumes)."""
        self._set(server, "ready")
        if not wait_up:
            return self.server(server)

        def up() -> ServerState | None:
            state = self.server(server)
            return state if state.in_rotation else None

        return wait_until(up, timeout,
                          f"HAProxy to see {server} up", interval=0.1,
                          on_timeout=lambda: ServiceError(
                              self.step, f"HAProxy does not see {server} up {timeout:g} s after it was put back "
                                         f"({self.server(server).status})",
                              "check the host's health endpoint; HAProxy keeps it out of rotation meanwhile"))
