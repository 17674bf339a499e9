"""Users on loopback: a few keep-alive clients calling health and the analysis endpoint while a test
watches the app, so its metrics have requests, errors and latencies to show."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import httpx


class Traffic:
    def __init__(self, base_url: str, clients: int = 2, pause: float = 0.02, analyze: bool = True) -> None:
        self.base_url = base_url
        self.clients = clients
        self.pause = pause
        self.analyze = analyze
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._serial = itertools.count()
        self._lock = threading.Lock()

    def __enter__(self) -> Traffic:
        for n in range(self.clients):
            thread = threading.Thread(target=self._user, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _user(self, n: int) -> None:
        headers = {"X-User-Id": f"user-{n}"}
        with httpx.Client(base_url=self.base_url, timeout=5, headers=headers) as client:
            while not self._stop.is_set():
                serial = next(self._serial)
                try:
                    if self.analyze and serial % 2:
                        answer = client.post("/api/analyze", json={
                            "text": f"Python developer {serial}", "profile": f"python sql {serial}"})
                    else:
                        answer = client.get("/api/health")
                    status = str(answer.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self._lock:
                    self.statuses[status] += 1
                time.sleep(self.pause)
