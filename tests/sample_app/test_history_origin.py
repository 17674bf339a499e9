from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sample_app.history import APP_TREE, IGNORED, HistoryError, build_origin, load_manifest

from .checkouts import Origin, git

TAGS = ["v1", "v2", "v3", "v4", "v5"]
BRANCH = "experiment/llm-scoring"
BOT = "jobapp release bot <releases@jobapp.invalid>"


def tree_files(origin: Path, ref: str) -> set[str]:
    return set(git("ls-tree", "-r", "--name-only", ref, cwd=origin).splitlines())


def test_refs_name_every_release(origin: Origin) -> None:
    assert set(origin.refs) == {*TAGS, "main", BRANCH}
    assert origin.refs["main"] == origin.refs["v5"]
    assert len(set(origin.refs.values())) == 6
    assert git("symbolic-ref", "HEAD", cwd=origin.path) == "refs/heads/main"
    assert git("for-each-ref", "--format=%(refname)", "refs/heads", cwd=origin.path).split() == [
        f"refs/heads/{BRANCH}",
        "refs/heads/main",
    ]


def test_build_is_reproducible_and_fast(origin: Origin, tmp_path: Path) -> None:
    started = time.monotonic()
    again = build_origin(tmp_path / "again.git")
    assert time.monotonic() - started < 5
    assert again == origin.refs


def test_main_is_one_commit_per_release(origin: Origin) -> None:
    first_parent = git("rev-list", "--first-parent", "main", cwd=origin.path).split()
    assert first_parent == [origin.refs[tag] for tag in reversed(TAGS)]
    messages = {release.tag: release.message for release in load_manifest() if release.tag}
    for tag in TAGS:
        assert git("log", "-1", "--format=%B", tag, cwd=origin.path) == messages[tag]


def test_tags_are_annotated_and_point_at_their_release(origin: Origin) -> None:
    for tag in TAGS:
        assert git("cat-file", "-t", tag, cwd=origin.path) == "tag"
        assert git("rev-parse", f"{tag}^{{commit}}", cwd=origin.path) == origin.refs[tag]
        assert (
            git("for-each-ref", "--format=%(taggername) %(taggeremail)", f"refs/tags/{tag}", cwd=origin.path)
            == BOT
        )


def test_author_committer_and_dates_are_fixed(origin: Origin) -> None:
    dates = {release.name: release.date for release in load_manifest()}
    for name, ref in [*((tag, tag) for tag in TAGS), ("experiment-llm-scoring", BRANCH)]:
        line = git("log", "-1", "--format=%an <%ae>|%cn <%ce>|%aI|%cI", ref, cwd=origin.path)
        assert line == f"{BOT}|{BOT}|{dates[name]}|{dates[name]}"


def test_experiment_branch_forks_from_v2_and_is_not_merged(origin: Origin) -> None:
    branch = origin.refs[BRANCH]
    assert git("rev-parse", f"{branch}^", cwd=origin.path) == origin.refs["v2"]
    assert git("merge-base", "--is-ancestor", origin.refs["v2"], "main", cwd=origin.path) == ""
    with pytest.raises(subprocess.CalledProcessError, match="returned non-zero exit status 1"):
        git("merge-base", "--is-ancestor", branch, "main", cwd=origin.path)
    changed = git("diff", "--name-only", "v2", branch, cwd=origin.path).split()
    assert changed == ["jobapp/analysis.py", "tests/test_analysis.py"]
    assert 'MODEL = "llm-v0"' in git("show", f"{branch}:jobapp/analysis.py", cwd=origin.path)
    assert 'MODEL = "keyword-v1"' in git("show", "v5:jobapp/analysis.py", cwd=origin.path)


def test_v1_is_the_sample_app_tree(origin: Origin) -> None:
    on_disk = {
        str(path.relative_to(APP_TREE))
        for path in APP_TREE.rglob("*")
        if path.is_file()
        and not any(path.relative_to(APP_TREE).match(pattern) or pattern in path.parts for pattern in IGNORED)
    }
    assert tree_files(origin.path, "v1") == on_disk
    for relative in ("jobapp/app.py", "migrations/versions/0001_baseline.py", "tests/conftest.py"):
        assert git("show", f"v1:{relative}", cwd=origin.path) == (APP_TREE / relative).read_text().rstrip(
            "\n"
        )


def test_each_release_is_its_overlay_on_the_previous_tree(origin: Origin) -> None:
    releases = load_manifest()
    previous = {"main": "v1"}
    for release in releases[1:]:
        ref = release.tag or release.branch
        overlay = {
            str(path.relative_to(release.overlay)) for path in release.overlay.rglob("*") if path.is_file()
        }
        base = previous["main"]
        assert tree_files(origin.path, ref) == (tree_files(origin.path, base) - set(release.delete)) | overlay
        for relative in overlay:
            content = (release.overlay / relative).read_text().rstrip("\n")
            assert git("show", f"{ref}:{relative}", cwd=origin.path) == content
        if release.branch == "main":
            previous["main"] = ref


def test_migrations_grow_one_revision_per_schema_release(origin: Origin) -> None:
    expected = {
        "v1": ["0001_baseline.py"],
        "v2": ["0001_baseline.py", "0002_salary_range.py"],
        "v3": ["0001_baseline.py", "0002_salary_range.py", "0003_canonical_url.py"],
        "v4": ["0001_baseline.py", "0002_salary_range.py", "0003_canonical_url.py", "0004_job_tags.py"],
        "v5": ["0001_baseline.py", "0002_salary_range.py", "0003_canonical_url.py", "0004_job_tags.py"],
    }
    for tag, files in expected.items():
        listed = git("ls-tree", "--name-only", f"{tag}:migrations/versions", cwd=origin.path).split()
        assert listed == files
    fixed = git("diff", "--name-only", "v3", "v4", "--", "migrations/versions", cwd=origin.path).split()
    assert fixed == ["migrations/versions/0003_canonical_url.py", "migrations/versions/0004_job_tags.py"]


def test_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "precious.txt").write_text("keep me")
    with pytest.raises(HistoryError, match="not empty"):
        build_origin(tmp_path / "dest")
    assert (tmp_path / "dest" / "precious.txt").read_text() == "keep me"
