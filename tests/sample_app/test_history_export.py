"""The maintainers' workflow: check the series out as a repository, change it there, export it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sample_app.history import RELEASES_DIR, HistoryError, checkout, export, load_series

BRANCH = "experiment/llm-scoring"
PROJECT = Path(__file__).resolve().parents[2]


def maintainer(repo: Path, *args: str) -> str:
    """git as a maintainer runs it in the checkout: their own name, none of this machine's config."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "A Maintainer",
        "GIT_AUTHOR_EMAIL": "maintainer@jobapp.invalid",
        "GIT_COMMITTER_NAME": "A Maintainer",
        "GIT_COMMITTER_EMAIL": "maintainer@jobapp.invalid",
    }
    result = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def history(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sample_app.history", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def add_file_to_release(repo: Path, tag: str, name: str) -> None:
    """Change a release in the middle of main the way `git rebase -i` does, without an editor."""
    maintainer(repo, "checkout", "--quiet", "--detach", tag)
    (repo / name).write_text(f"added to {tag}\n")
    maintainer(repo, "add", name)
    maintainer(repo, "commit", "--quiet", "--amend", "--no-edit")
    maintainer(repo, "rebase", "--quiet", "--onto", "HEAD", tag, "main")


def test_export_of_a_checkout_round_trips(tmp_path: Path) -> None:
    repo, out = tmp_path / "jobapp", tmp_path / "releases"

    made = history("checkout", str(repo))
    assert made.returncode == 0, made.stderr
    assert maintainer(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert maintainer(repo, "status", "--porcelain") == ""
    exported = history("export", str(repo), "--to", str(out))
    assert exported.returncode == 0, exported.stderr

    assert files(out) == files(RELEASES_DIR)


def test_a_changed_release_is_exported_and_replays(tmp_path: Path) -> None:
    repo, out = tmp_path / "jobapp", tmp_path / "releases"
    checkout(repo)

    add_file_to_release(repo, "v3", "NOTES.md")
    export(repo, out)

    before, after = files(RELEASES_DIR), files(out)
    assert before.keys() == after.keys()
    assert [name for name in before if before[name] != after[name]] == [
        next(release.file for release in load_series() if release.tag == "v3")
    ]
    rebuilt = checkout(tmp_path / "again", releases=out)
    # The tags a rebase left behind followed their releases by subject.
    assert rebuilt["v5"] == rebuilt["main"]
    again = tmp_path / "again"
    assert maintainer(again, "rev-parse", "main^{tree}") == maintainer(repo, "rev-parse", "main^{tree}")
    assert maintainer(again, "show", "v3:NOTES.md") == "added to v3"
    assert "NOTES.md" not in maintainer(again, "ls-tree", "--name-only", "v2")


def test_a_branch_left_behind_by_a_rebase_is_refused_with_the_command_that_moves_it(tmp_path: Path) -> None:
    repo, out = tmp_path / "jobapp", tmp_path / "releases"
    checkout(repo)
    add_file_to_release(repo, "v2", "NOTES.md")

    with pytest.raises(HistoryError, match=f"branch {BRANCH} .* still starts from") as refused:
        export(repo, out)
    assert not out.exists()

    command = re.search(r"`git -C (\S+) (rebase --onto \S+ \S+ \S+)`", str(refused.value))
    assert command is not None
    maintainer(Path(command[1]), *command[2].split())
    export(repo, out)
    series = {release.file: release for release in load_series(out)}
    assert [release.ref for release in series.values()] == ["v1", "v2", BRANCH, "v3", "v4", "v5"]
    experiment = next(name for name, release in series.items() if release.branch == BRANCH)
    assert files(out)[experiment] == files(RELEASES_DIR)[experiment]


def test_uncommitted_changes_are_refused(tmp_path: Path) -> None:
    repo, out = tmp_path / "jobapp", tmp_path / "releases"
    checkout(repo)
    (repo / "README.md").write_text("changed, not committed\n")

    with pytest.raises(HistoryError, match="uncommitted changes"):
        export(repo, out)
    assert not out.exists()


def test_a_v1_other_than_the_app_tree_is_refused(tmp_path: Path) -> None:
    repo, out = tmp_path / "jobapp", tmp_path / "releases"
    checkout(repo)
    maintainer(repo, "branch", "--quiet", "--delete", "--force", BRANCH)
    add_file_to_release(repo, "v1", "NOTES.md")

    with pytest.raises(HistoryError, match=r"v1 in .* differs from .*jobapp(.|\n)*NOTES\.md"):
        export(repo, out)
    assert not out.exists()


def test_the_commands_explain_what_went_wrong(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("")

    refused = history("checkout", str(tmp_path / "busy"))
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: checkout: ") and "not empty" in refused.stderr

    missing = history("export", str(tmp_path / "missing"), "--to", str(tmp_path / "out"))
    assert missing.returncode == 1
    assert "error: export: " in missing.stderr and "does not exist" in missing.stderr

    not_a_checkout = history("export", str(tmp_path / "busy"), "--to", str(tmp_path / "out"))
    assert not_a_checkout.returncode == 1
    assert "not the top of a working repository" in not_a_checkout.stderr
    assert not (tmp_path / "out").exists()
