"""jobapp's release history, rebuilt as a git repository.

``sample_app/jobapp/`` is release v1. Each later release is an overlay directory
``sample_app/releases/<name>/`` copied over the tree before it; ``releases/manifest.toml`` lists
the releases in order with their tag, branch, commit message, date and the paths each deletes.
``build_origin(dest)`` replays that list into a bare repository whose SHAs depend only on the
files, because author, committer and dates are fixed.

The history it builds (see manifest.toml for what each release does)::

    main:  v1 -- v2 -- v3 -- v4 -- v5
                   \\
    experiment/llm-scoring: one commit, not merged
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_TREE = HERE / "jobapp"
RELEASES_DIR = HERE / "releases"
MANIFEST = RELEASES_DIR / "manifest.toml"
MAIN = "main"
AUTHOR_NAME = "jobapp release bot"
AUTHOR_EMAIL = "releases@jobapp.invalid"
# Local by-products of running or testing a tree; never part of a release.
IGNORED = ("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache", "var", "*.db", ".coverage")


class HistoryError(RuntimeError):
    """The manifest or an overlay is inconsistent, or git failed while replaying it."""


@dataclass(frozen=True)
class Release:
    name: str
    tag: str | None
    branch: str
    message: str
    date: str
    delete: tuple[str, ...]

    @property
    def overlay(self) -> Path:
        return RELEASES_DIR / self.name


def load_manifest(path: Path = MANIFEST) -> list[Release]:
    with path.open("rb") as handle:
        entries = tomllib.load(handle).get("release", [])
    releases = [
        Release(
            name=entry["name"],
            tag=entry.get("tag"),
            branch=entry["branch"],
            message=entry["message"],
            date=entry["date"],
            delete=tuple(entry.get("delete", [])),
        )
        for entry in entries
    ]
    if not releases or releases[0].branch != MAIN:
        raise HistoryError(f"{path}: the first release must be on {MAIN}; its tree is {APP_TREE}")
    names = [release.name for release in releases]
    tags = [release.tag for release in releases if release.tag]
    if len(set(names)) != len(names) or len(set(tags)) != len(tags):
        raise HistoryError(f"{path}: release names and tags must be unique")
    for release in releases[1:]:
        if not release.overlay.is_dir():
            raise HistoryError(f"{path}: release {release.name} has no overlay directory {release.overlay}")
    return releases


def build_origin(dest: Path) -> dict[str, str]:
    """Create a bare repository at ``dest`` holding every release.

    Returns the commit SHA of every tag and branch, e.g. ``{"v1": ..., "main": ...,
    "experiment/llm-scoring": ...}``. ``dest`` must not exist or be empty.
    """
    releases = load_manifest()
    if dest.exists() and any(dest.iterdir()):
        raise HistoryError(f"{dest} is not empty; build_origin needs a new directory")
    refs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="jobapp-history-") as scratch:
        work = Path(scratch) / "work"
        _git(["init", "--quiet", "--initial-branch", MAIN, str(work)], cwd=Path(scratch))
        _copy_tree(APP_TREE, work)
        _commit(work, releases[0], refs)
        for release in releases[1:]:
            if release.branch != MAIN:
                _git(["checkout", "--quiet", "-b", release.branch], cwd=work)
            for relative in release.delete:
                _remove(work / relative)
            _copy_tree(release.overlay, work)
            _commit(work, release, refs)
            if release.branch != MAIN:
                _git(["checkout", "--quiet", MAIN], cwd=work)
        refs[MAIN] = _git(["rev-parse", MAIN], cwd=work)
        dest.mkdir(parents=True, exist_ok=True)
        _git(["init", "--quiet", "--bare", "--initial-branch", MAIN, str(dest)], cwd=Path(scratch))
        _git(["push", "--quiet", str(dest), "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"], cwd=work)
    return refs


def _commit(work: Path, release: Release, refs: dict[str, str]) -> None:
    _git(["add", "--all"], cwd=work)
    _git(["commit", "--quiet", "--no-verify", "--message", release.message], cwd=work, date=release.date)
    sha = _git(["rev-parse", "HEAD"], cwd=work)
    if release.tag:
        _git(
            ["tag", "--annotate", release.tag, "--message", f"jobapp {release.tag}"],
            cwd=work,
            date=release.date,
        )
        refs[release.tag] = sha
    if release.branch != MAIN:
        refs[release.branch] = sha


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*IGNORED), dirs_exist_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    else:
        raise HistoryError(f"release deletes {path}, which does not exist")


def _git(args: list[str], cwd: Path, date: str = "2024-01-01T00:00:00+00:00") -> str:
    # A clean environment: the caller's git config, hooks or GIT_DIR must not change the SHAs.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "LC_ALL": "C",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise HistoryError(f"git {' '.join(args)} failed in {cwd}: {output}")
    return result.stdout.strip()
