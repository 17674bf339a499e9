"""The app's git repository: a bare origin whose `main` carries two tagged releases.

    r1   the baseline: the items table, greetlib 1.0
    r2   a reversible migration adding items.priority, the code that uses it, greetlib 2.0

The sources are `releases/r1` (the whole tree) and `releases/r2` (what r2 changes on top of it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RELEASES = Path(__file__).resolve().parent / "releases"
TAGS = ("r1", "r2")
MESSAGES = {
    "r1": "Inventory: items API on PostgreSQL, migrated by Alembic",
    "r2": "Items get a priority; the list shows urgent items first (greetlib 2.0)",
}
REVISIONS = {"r1": "3f1c2a7b9d10", "r2": "8e4d5b6c7a21"}
IDENTITY = {"GIT_AUTHOR_NAME": "Inventory Team", "GIT_AUTHOR_EMAIL": "team@inventory.invalid",
            "GIT_COMMITTER_NAME": "Inventory Team", "GIT_COMMITTER_EMAIL": "team@inventory.invalid"}


@dataclass(frozen=True)
class Origin:
    path: Path  # the bare repository
    shas: dict[str, str]  # tag -> commit

    def sha(self, tag: str) -> str:
        return self.shas[tag]


def build_origin(root: Path) -> Origin:
    """`root/origin.git`, built through a scratch clone `root/src` that is removed afterwards."""
    src = root / "src"
    src.mkdir(parents=True)
    git(src, "init", "--quiet", "--initial-branch=main")
    shas = {}
    for tag in TAGS:
        # shutil.copy, not copy2: a file copied with its old mtime over one of the same size would look
        # unchanged to git's index (a fresh checkout gives both releases' files the same second).
        shutil.copytree(RELEASES / tag, src, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"),
                        copy_function=shutil.copy)
        git(src, "add", "--all")
        git(src, "commit", "--quiet", "-m", MESSAGES[tag])
        git(src, "tag", "-a", tag, "-m", f"release {tag}")
        shas[tag] = git(src, "rev-parse", "HEAD")
    origin = root / "origin.git"
    git(root, "clone", "--quiet", "--bare", str(src), str(origin))
    shutil.rmtree(src)
    return Origin(origin, shas)


def clone(origin: Path, destination: Path, ref: str) -> None:
    """A clone of the origin with `ref` checked out (detached), as a host keeps its workspace."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    git(destination.parent, "clone", "--quiet", str(origin), str(destination))
    git(destination, "checkout", "--quiet", "--detach", ref)


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **IDENTITY, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()
