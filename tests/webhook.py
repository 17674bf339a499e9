"""A webhook endpoint on loopback that records what it is sent: the stand-in for Slack or Teams."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from tests.conftest import free_ports


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on loopback: every POST body it is sent, with the path it was sent to."""

    def __init__(self, port: int) -> None:
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                self.paths.append(handler.path)
                self.received.append(json.loads(body))
                # 200 "ok", as Slack's and Mattermost's webhooks answer (Apprise counts a 204 as a failure).
                handler.send_response(200)
                handler.send_header("Content-Length", "2")
                handler.end_headers()
                handler.wfile.write(b"ok")

            def log_message(handler, *args: Any) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", port), Handler)

    def subjects(self) -> list[str]:
        return [m["subject"] for m in self.received]

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.received[mark:]


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver(free_ports(1)[0])
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


S = TypeVar("S", bound=ThreadingHTTPServer)


@contextmanager
def serving(server: S) -> Iterator[S]:
    """`server` answering on its own thread until the block ends. A short poll: shutting a server down
    waits for its next poll, half a second by default."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
