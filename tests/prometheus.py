"""A real Prometheus server on loopback for tests and benchmarks: Debian's `prometheus` package,
scraping the sandbox every second into a temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_ports

BINARY = "prometheus"


def require(binary: str) -> str:
    """The binary's path; in CI (REQUIRE_POSTGRES=1) a missing one fails loudly, elsewhere it skips."""
    path = shutil.which(binary) or (f"/usr/bin/{binary}" if os.path.exists(f"/usr/bin/{binary}") else None)
    if path is None:
        message = f"{binary} is not installed (Debian package {binary}; .ci/run installs it)"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Prometheus:
    def __init__(self, directory: Path, targets: dict[str, str]) -> None:
        self.directory = directory
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = "\n".join(f"  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]"
                         for job, target in targets.items())
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Prometheus:
        log = open(self.directory / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [require(BINARY), f"--config.file={self.directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"Prometheus did not start; see {self.directory / 'prometheus.log'}")

    def wait_for_series(self, query: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=2).json()
            if answer["data"]["result"]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus has no data for {query} after {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
