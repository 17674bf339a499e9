from __future__ import annotations

import subprocess
from pathlib import Path

from jobapp.version import UNKNOWN, git_version


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(cwd),
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
        },
    ).stdout.strip()


def test_checkout_root_reports_head(tmp_path: Path) -> None:
    git("init", "--quiet", cwd=tmp_path)
    (tmp_path / "file.txt").write_text("x")
    git("add", "file.txt", cwd=tmp_path)
    git("commit", "--quiet", "-m", "first", cwd=tmp_path)
    assert git_version(tmp_path) == git("rev-parse", "HEAD", cwd=tmp_path)


def test_directory_nested_in_a_checkout_is_unknown(tmp_path: Path) -> None:
    git("init", "--quiet", cwd=tmp_path)
    (tmp_path / "file.txt").write_text("x")
    git("add", "file.txt", cwd=tmp_path)
    git("commit", "--quiet", "-m", "first", cwd=tmp_path)
    nested = tmp_path / "app"
    nested.mkdir()
    assert git_version(nested) == UNKNOWN


def test_plain_directory_is_unknown(tmp_path: Path) -> None:
    assert git_version(tmp_path) == UNKNOWN


def test_repository_without_commits_is_unknown(tmp_path: Path) -> None:
    git("init", "--quiet", cwd=tmp_path)
    assert git_version(tmp_path) == UNKNOWN
