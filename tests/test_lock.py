"""The install resolves nothing: `make` installs exactly requirements.lock, and the lock is whole.

A registry release published after the lock must neither change nor break the install (pip 23's
hash-checking mode once looked up the newest httpx for prefect's `httpx[http2]` extra and refused
it as unpinned). So the Makefile installs the lock with --no-deps and proves it with `pip check`;
these tests prove the lock is closed under its own requirements, and that a fresh venv made the
way `make` makes it installs from it.
"""

from __future__ import annotations

import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked(lock: str, environment: dict[str, str]) -> dict[str, str]:
    """name -> version of every pin that applies to `environment` (its marker holds)."""
    pins: dict[str, str] = {}
    for line in lock.splitlines():
        match = PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker is None or Requirement(f"x; {marker}").marker.evaluate(environment):  # type: ignore[union-attr]
            pins[canonicalize_name(name)] = version
    return pins


def missing_requirements(pins: dict[str, str], environment: dict[str, str]) -> list[str]:
    """Each requirement of a locked package that no pin satisfies, read from the installed packages'
    metadata; a requirement with extras (httpx[http2]) brings the extras' own requirements in."""
    declared = {name: [Requirement(text) for text in metadata.requires(name) or []] for name in pins}
    wanted: dict[str, set[str]] = {}

    def applies(owner: str, req: Requirement) -> bool:
        extras = {""} | wanted.get(owner, set())
        return req.marker is None or any(req.marker.evaluate({**environment, "extra": e}) for e in extras)

    while True:  # the extras asked for grow until nothing new applies
        before = {name: set(extras) for name, extras in wanted.items()}
        for owner, reqs in declared.items():
            for req in reqs:
                if req.extras and applies(owner, req):
                    wanted.setdefault(canonicalize_name(req.name), set()).update(req.extras)
        if wanted == before:
            break
    problems = []
    for owner, reqs in declared.items():
        for req in filter(lambda r: applies(owner, r), reqs):
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is None:
                problems.append(f"{owner} needs {req}, which the lock does not pin")
            elif not req.specifier.contains(pinned, prereleases=True):
                problems.append(f"{owner} needs {req}, the lock pins {pinned}")
    return problems


def test_every_requirement_of_a_locked_package_is_locked_too() -> None:
    environment = dict(default_environment())
    pins = locked((ROOT / "requirements.lock").read_text(), environment)
    assert "prefect" in pins and "h2" in pins, "the lock lost prefect or its httpx[http2] extra"
    assert missing_requirements(pins, environment) == []


def test_a_missing_pin_is_found() -> None:
    environment = dict(default_environment())
    lock = (ROOT / "requirements.lock").read_text()
    pins = locked(lock, environment)
    del pins["h2"]  # prefect needs httpx[http2], which needs h2
    assert any("h2" in problem for problem in missing_requirements(pins, environment))


@pytest.mark.slow
def test_a_fresh_venv_installs_the_lock_as_make_does(tmp_path: Path) -> None:
    """`make install` into a new venv of this python3, with the pip its `venv` brings: no resolution,
    then `pip check`. Packages come from pip's cache when it has them, else from the registry. No
    bytecode is compiled (PIP_NO_COMPILE): it is most of the install's CPU and proves nothing here."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env["PIP_NO_COMPILE"] = "1"
    done = subprocess.run(["make", "--no-print-directory", "install", f"VENV={venv}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "No broken requirements found" in done.stdout
    assert (venv / ".installed").exists() and (venv / "bin" / "deployctl").exists()
    again = subprocess.run(["make", "--no-print-directory", "install", f"VENV={venv}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, "make install is not idempotent"
