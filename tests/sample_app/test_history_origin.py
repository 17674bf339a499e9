"""The origin built from jobapp's patch series: one commit per release, made from its patch."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sample_app.history import (
    APP_TREE,
    IGNORED,
    RELEASES_DIR,
    SERIES,
    HistoryError,
    build_origin,
    load_series,
)

from .checkouts import Origin, git

TAGS = ["v1", "v2", "v3", "v4", "v5"]
BRANCH = "experiment/llm-scoring"
BOT = "jobapp release bot <releases@jobapp.invalid>"
# Series order: the experiment was made between v2 and v3.
IN_ORDER = ["v1", "v2", BRANCH, "v3", "v4", "v5"]


def tree_files(origin: Path, ref: str) -> set[str]:
    return set(git("ls-tree", "-r", "--name-only", ref, cwd=origin).splitlines())


def headers(path: Path) -> tuple[str, datetime, str]:
    """Author, date and commit message of a series file, read the way a mail client reads it."""
    mail = email.message_from_string(path.read_text(encoding="utf-8"), policy=email.policy.default)
    subject = str(mail["Subject"]).removeprefix("[PATCH] ")
    body = str(mail.get_payload()).split("\n---\n", 1)[0].strip()
    return str(mail["From"]), mail["Date"].datetime, f"{subject}\n\n{body}" if body else subject


def commit_dates(origin: Path, ref: str) -> tuple[datetime, datetime]:
    author, committer = git("log", "-1", "--format=%aI %cI", ref, cwd=origin).split()
    return datetime.fromisoformat(author), datetime.fromisoformat(committer)


def test_refs_name_every_release(origin: Origin) -> None:
    assert set(origin.refs) == {*TAGS, "main", BRANCH}
    assert origin.refs["main"] == origin.refs["v5"]
    assert len(set(origin.refs.values())) == 6
    assert git("symbolic-ref", "HEAD", cwd=origin.path) == "refs/heads/main"
    assert git("for-each-ref", "--format=%(refname)", "refs/heads", cwd=origin.path).split() == [
        f"refs/heads/{BRANCH}",
        "refs/heads/main",
    ]


def test_the_series_lists_every_release_and_the_directory_holds_nothing_else() -> None:
    series = load_series()
    assert [release.tag or release.branch for release in series] == IN_ORDER
    assert [release.file[:4] for release in series] == ["0000", "0001", "0002", "0003", "0004", "0005"]
    assert {path.name for path in RELEASES_DIR.iterdir()} == {SERIES, *(release.file for release in series)}


def test_main_is_one_commit_per_release(origin: Origin) -> None:
    first_parent = git("rev-list", "--first-parent", "main", cwd=origin.path).split()
    assert first_parent == [origin.refs[tag] for tag in reversed(TAGS)]
    assert git("rev-list", "--count", "main", cwd=origin.path) == str(len(TAGS))


def test_each_commit_is_made_from_its_patch_headers(origin: Origin) -> None:
    for release in load_series():
        author, date, message = headers(RELEASES_DIR / release.file)
        ref = release.tag or release.branch
        assert git("log", "-1", "--format=%an <%ae>|%cn <%ce>", ref, cwd=origin.path) == f"{author}|{BOT}"
        assert commit_dates(origin.path, ref) == (date, date)
        assert git("log", "-1", "--format=%B", ref, cwd=origin.path) == message


def test_each_commit_changes_the_files_its_patch_changes(origin: Origin) -> None:
    for release in load_series()[1:]:
        patch = (RELEASES_DIR / release.file).read_text(encoding="utf-8")
        in_patch = sorted(re.findall(r"^diff --git a/\S+ b/(\S+)$", patch, flags=re.MULTILINE))
        ref = release.tag or release.branch
        assert git("diff", "--name-only", f"{ref}^", ref, cwd=origin.path).split() == in_patch


def test_tags_are_annotated_and_dated_like_their_release(origin: Origin) -> None:
    for tag in TAGS:
        assert git("cat-file", "-t", tag, cwd=origin.path) == "tag"
        assert git("rev-parse", f"{tag}^{{commit}}", cwd=origin.path) == origin.refs[tag]
        tagger = "--format=%(taggername) %(taggeremail)|%(taggerdate:iso-strict)"
        name, date = git("for-each-ref", tagger, f"refs/tags/{tag}", cwd=origin.path).split("|")
        assert name == BOT
        assert datetime.fromisoformat(date) == commit_dates(origin.path, tag)[0]


def test_build_is_reproducible(origin: Origin, tmp_path: Path) -> None:
    assert build_origin(tmp_path / "again.git") == origin.refs


def test_now_dates_the_history_in_the_days_before_it(origin: Origin, tmp_path: Path) -> None:
    now = datetime(2031, 5, 14, 16, 20, 45, tzinfo=timezone.utc)
    recent = tmp_path / "recent.git"
    refs = build_origin(recent, now=now)

    assert set(refs) == set(origin.refs)
    for ref in IN_ORDER:
        tree = f"{ref}^{{tree}}"
        assert git("rev-parse", tree, cwd=recent) == git("rev-parse", tree, cwd=origin.path)
    dates = []
    for ref in IN_ORDER:
        author, committer = commit_dates(recent, ref)
        assert author == committer
        dates.append(author)
    assert now - timedelta(days=5) < dates[0] <= now - timedelta(days=2)
    assert now - timedelta(hours=2) < dates[-1] < now
    gaps = [later - earlier for earlier, later in zip(dates, dates[1:])]
    assert all(timedelta(hours=1) <= gap <= timedelta(days=2) for gap in gaps), gaps
    for tag in TAGS:
        tagged = git("for-each-ref", "--format=%(taggerdate:iso-strict)", f"refs/tags/{tag}", cwd=recent)
        assert datetime.fromisoformat(tagged) == commit_dates(recent, tag)[0]


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
