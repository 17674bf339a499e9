"""What the kernel says about a process, on real processes: a parent that leaves an exited child
unreaped (a zombie), a child that still runs, and pid files in every state."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tasks.process_state import age, children, is_alive, read_pid
from tasks.waiting import wait_until

# Forks a child that exits at once and one that sleeps, never reaps the first, prints both pids, waits.
PARENT = """
import os, sys, time
zombie = os.fork()
if zombie == 0:
    os._exit(0)
sleeper = os.fork()
if sleeper == 0:
    time.sleep(60)
    os._exit(0)
print(zombie, sleeper, flush=True)
sys.stdin.read()
"""


@dataclass
class Family:
    parent: int
    zombie: int
    sleeper: int


@pytest.fixture
def family() -> Iterator[Family]:
    process = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdin is not None
    zombie, sleeper = (int(pid) for pid in process.stdout.readline().split())
    try:
        yield Family(process.pid, zombie, sleeper)
    finally:
        subprocess.run(["kill", "-9", str(sleeper)], check=False)
        process.stdin.close()
        process.wait(10)


def test_a_zombie_is_not_alive_and_no_child(family: Family) -> None:
    wait_until(lambda: psutil.Process(family.zombie).status() == psutil.STATUS_ZOMBIE, 10, "the first child to exit")
    assert Path(f"/proc/{family.zombie}").exists(), "the zombie must still be there for this test to mean anything"
    assert not is_alive(family.zombie)
    assert is_alive(family.sleeper)
    assert children(family.parent) == [family.sleeper]


def test_a_process_of_ours_that_exited_is_reaped_and_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: not is_alive(process.pid), 10, "the child to exit")
    assert not Path(f"/proc/{process.pid}").exists(), "is_alive reaps an exited child of ours"


def test_a_gone_process_is_not_alive_has_no_children_and_no_age() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert not is_alive(process.pid)
    assert children(process.pid) == []
    assert age(process.pid) == 0.0


def test_age_counts_from_the_process_start(family: Family) -> None:
    assert 0 <= age(family.sleeper) < 30
    time.sleep(0.3)
    assert age(family.sleeper) >= 0.3


@pytest.mark.parametrize(("text", "pid"), [("4242\n", 4242), ("", None), ("not a pid", None), ("-1", None)])
def test_read_pid(tmp_path: Path, text: str, pid: int | None) -> None:
    (tmp_path / "app.pid").write_text(text)
    assert read_pid(tmp_path / "app.pid") == pid


def test_read_pid_of_a_missing_file(tmp_path: Path) -> None:
    assert read_pid(tmp_path / "app.pid") is None
