"""jobapp's release history: a patch series, replayed into a git repository.

``sample_app/jobapp/`` is release v1. Every later release is one ``git format-patch`` file in
``sample_app/releases/``: its headers are the commit's author, date and message, its body is the
diff a reviewer reads. ``releases/series`` lists them in order with the branch each lands on and
its tag. Its first file, ``0000-*.msg``, holds v1's headers and message and no diff, because v1's
tree is the directory itself.

The history (each patch says what its release does)::

    main:  v1 -- v2 -- v3 -- v4 -- v5
                   \\
    experiment/llm-scoring: one commit, not merged

``build_origin(dest)`` commits v1 and applies the patches with ``git am`` into a bare repository
at ``dest``. Its SHAs depend only on the series and v1's files: git runs without the caller's
configuration, the committer is the release bot and every committer date is its author date.
``build_origin(dest, now=...)`` dates the same history relative to ``now`` instead, so it reads
like a team's recent work (v1 four days before ``now``, the last release an hour before it, the
others spaced in proportion to their headers' dates); the trees are the same.

Changing a release
------------------

The patch files are generated: change the history in a repository and write the series back::

    .venv/bin/python -m sample_app.history checkout /tmp/jobapp
    cd /tmp/jobapp
    git rebase -i v2        # e.g. mark v3 "edit", change it, `git commit --amend`, `git rebase --continue`
    cd -
    .venv/bin/python -m sample_app.history export /tmp/jobapp
    git diff sample_app/releases

``export`` reads the repository's commits, not its work tree, so it refuses uncommitted changes
and an unfinished rebase. It writes what the refs say:

* main, from its root commit along first parents, is one release per commit (no merges);
* every other branch is the commits it adds to main, after the main commit it starts from;
* a tag names the release it points at. A rebase leaves tags on the commits it replaced; such a
  tag follows the release with the same subject, so there is no need to move it by hand;
* a branch that still starts from a replaced commit must be moved onto main first; export
  prints the ``git rebase --onto`` that does it;
* v1 is ``sample_app/jobapp/``, not a patch: change it in the checkout (``git rebase -i --root``)
  and make the same change in that directory; export checks that the two agree.

To add a release, commit on main, ``git tag -a v6 -m "jobapp v6"`` and export; to add an
experiment, commit on a new branch started from main. Before replacing anything, export replays
the new series and checks that every release's tree, message and author match the repository.
"""

from __future__ import annotations

import argparse
import email.utils
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from tasks.processes import Advice, Command, one_line, run

# Named in messages and help, where __name__ would be "__main__" under `python -m`.
MODULE = "sample_app.history"
HERE = Path(__file__).resolve().parent
APP_TREE = HERE / "jobapp"
RELEASES_DIR = HERE / "releases"
SERIES = "series"
MAIN = "main"
AUTHOR_NAME = "jobapp release bot"
AUTHOR_EMAIL = "releases@jobapp.invalid"
# Local by-products of running or testing a tree; never part of a release.
IGNORED = ("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache", "var", "*.db", ".coverage")
# With `now`, the oldest release is dated this long before it and the newest this long before it.
OLDEST_AGE = timedelta(days=4)
NEWEST_AGE = timedelta(hours=1)
# What `export` writes and replaces in the releases directory; anything else there is left alone.
GENERATED = re.compile(r"\d{4}-.+\.(patch|msg)")
SERIES_HEADER = """\
# jobapp's release history, oldest first. sample_app/history.py replays it into a git repository;
# its `export` command writes this file and the patches (see that module's docstring).
#
# One release a line: its file, the branch it lands on, its tag if it has one. The first line is v1,
# the tree sample_app/jobapp/ committed with its file's headers and message. Every later file is a
# `git format-patch` applied with `git am`. A patch on a branch other than main starts that branch
# from main as it stands at that line (or continues it, if an earlier line started it) and leaves
# main unchanged.
"""


class HistoryError(RuntimeError):
    """The series is inconsistent, git failed while replaying it, or a checkout cannot be exported."""


@dataclass(frozen=True)
class Release:
    """A line of the series: the file in the releases directory, its branch, its tag."""

    file: str
    branch: str
    tag: str | None = None

    @property
    def ref(self) -> str:
        return self.tag or self.branch


@dataclass(frozen=True)
class Mail:
    """The headers and message of a series file, as ``git am`` reads them."""

    author: str
    address: str
    date: datetime
    message: str


def load_series(releases: Path = RELEASES_DIR) -> list[Release]:
    path = releases / SERIES
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise HistoryError(f"{path} does not exist; restore it from git or export a checkout") from None
    series: list[Release] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3):
            raise HistoryError(f"{path}:{number}: expected `FILE BRANCH [TAG]`, found {line.strip()!r}")
        series.append(Release(fields[0], fields[1], fields[2] if len(fields) == 3 else None))
    if not series:
        raise HistoryError(f"{path} lists no release; the first line must be v1's .msg file")
    if series[0].branch != MAIN or not series[0].file.endswith(".msg"):
        raise HistoryError(f"{path}: the first line must be v1's .msg file, on {MAIN}")
    for release in series[1:]:
        if not release.file.endswith(".patch"):
            raise HistoryError(f"{path}: {release.file} follows v1, so it must be a .patch file")
    files = [release.file for release in series]
    tags = [release.tag for release in series if release.tag]
    if len(set(files)) != len(files) or len(set(tags)) != len(tags):
        raise HistoryError(f"{path}: a file or a tag is listed twice")
    for release in series:
        if not (releases / release.file).is_file():
            raise HistoryError(f"{path} lists {release.file}, which is not in {releases}")
    return series


def build_origin(dest: Path, now: datetime | None = None) -> dict[str, str]:
    """Create a bare repository at ``dest`` holding every release.

    Returns the commit SHA of every tag and branch, e.g. ``{"v1": ..., "main": ...,
    "experiment/llm-scoring": ...}``. ``dest`` must not exist or be empty. Without ``now`` the
    commits carry their patches' dates and the SHAs never change; with ``now`` they are dated in
    the days before it (a naive ``now`` is local time).
    """
    _require_empty(dest, "build_origin")
    with tempfile.TemporaryDirectory(prefix="jobapp-history-") as scratch:
        work = Path(scratch) / "work"
        series, shas = _replay(RELEASES_DIR, work, now)
        dest.mkdir(parents=True, exist_ok=True)
        _git(["init", "--quiet", "--bare", "--initial-branch", MAIN, str(dest)], cwd=Path(scratch))
        _git(["push", "--quiet", str(dest), "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"], cwd=work)
        return _refs(series, shas, main=_git(["rev-parse", MAIN], cwd=work))


def checkout(dest: Path, releases: Path = RELEASES_DIR) -> dict[str, str]:
    """Build the series into a new working repository at ``dest``, main checked out; its refs."""
    _require_empty(dest, "checkout")
    try:
        series, shas = _replay(releases, dest, None)
    except HistoryError:
        shutil.rmtree(dest, ignore_errors=True)  # it was empty; a half-built history helps nobody
        raise
    return _refs(series, shas, main=_git(["rev-parse", MAIN], cwd=dest))


def export(repo: Path, dest: Path = RELEASES_DIR) -> list[Release]:
    """Write the history in ``repo`` (a working repository) as the series in ``dest``.

    The files are written to a scratch directory and replayed first; ``dest`` changes only if
    the replay reproduces every release of ``repo``.
    """
    repo = repo.resolve()
    _require_exportable(repo)
    history = _read_history(repo)
    _require_base_is_app_tree(repo, history[0].sha)
    with tempfile.TemporaryDirectory(prefix="jobapp-export-") as scratch:
        staging = Path(scratch) / "series"
        staging.mkdir()
        series = _write_series(repo, history, staging)
        _verify(staging, repo, history, Path(scratch))
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.iterdir():
            if old.name == SERIES or GENERATED.fullmatch(old.name):
                old.unlink()
        for new in staging.iterdir():
            shutil.copyfile(new, dest / new.name)
    return series


# Building


def _replay(releases: Path, work: Path, now: datetime | None) -> tuple[list[Release], list[str]]:
    """Commit the series into a new repository at ``work``; the commit of every release, in order."""
    series = load_series(releases)
    mails = [_read_mail(releases / release.file) for release in series]
    dates = [mail.date for mail in mails] if now is None else _redate([mail.date for mail in mails], now)
    work.mkdir(parents=True, exist_ok=True)
    _git(["init", "--quiet", "--initial-branch", MAIN, str(work)], cwd=work.parent)
    shutil.copytree(APP_TREE, work, ignore=shutil.ignore_patterns(*IGNORED), dirs_exist_ok=True)
    _git(["add", "--all"], cwd=work)
    base = mails[0]
    _git(
        ["commit", "--quiet", "--no-verify", "--message", base.message],
        cwd=work,
        env={"GIT_AUTHOR_NAME": base.author, "GIT_AUTHOR_EMAIL": base.address},
        date=dates[0],
    )
    shas = [_tag(work, series[0], dates[0])]
    started: set[str] = set()
    for release, date in zip(series[1:], dates[1:], strict=True):
        if release.branch != MAIN:
            # The first patch of a branch starts it from main as it stands now.
            branch_args = [release.branch] if release.branch in started else ["-b", release.branch]
            _git(["checkout", "--quiet", *branch_args], cwd=work)
            started.add(release.branch)
        try:
            _git(["am", "--quiet", "--committer-date-is-author-date", str(releases / release.file)], cwd=work)
        except HistoryError as exc:
            raise HistoryError(
                f"applying {release.file} ({release.ref}) failed: {exc}. The patch no longer fits the "
                f"release before it: was {APP_TREE} or a patch edited by hand? Restore it, make the change "
                f"in a checkout instead and export that (see {MODULE}'s docstring)"
            ) from None
        if now is not None:
            # git am takes the author date from the patch (or the clock); amend sets both at once.
            _git(["commit", "--amend", "--quiet", "--no-edit", "--no-verify", "--date", date.isoformat()],
                 cwd=work, date=date)
        shas.append(_tag(work, release, date))
        if release.branch != MAIN:
            _git(["checkout", "--quiet", MAIN], cwd=work)
    return series, shas


def _tag(work: Path, release: Release, date: datetime) -> str:
    if release.tag:
        _git(["tag", "--annotate", release.tag, "--message", f"jobapp {release.tag}"], cwd=work, date=date)
    return _git(["rev-parse", "HEAD"], cwd=work)


def _refs(series: Sequence[Release], shas: Sequence[str], main: str) -> dict[str, str]:
    refs: dict[str, str] = {}
    for release, sha in zip(series, shas, strict=True):
        if release.tag:
            refs[release.tag] = sha
        if release.branch != MAIN:
            refs[release.branch] = sha  # the last patch on a branch is its tip
    refs[MAIN] = main
    return refs


def _read_mail(path: Path) -> Mail:
    # git mailinfo is the parser git am uses, so v1's commit is made the way the others are.
    with tempfile.TemporaryDirectory(prefix="jobapp-mail-") as scratch:
        body, patch = Path(scratch) / "body", Path(scratch) / "patch"
        mail = path.read_text(encoding="utf-8")
        info = _git(["mailinfo", str(body), str(patch)], cwd=Path(scratch), stdin=mail)
        headers = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line)
        parts = (headers.get("Subject", ""), body.read_text(encoding="utf-8").strip())
        message = "\n\n".join(part for part in parts if part)
    if not all(headers.get(key) for key in ("Author", "Email", "Date", "Subject")):
        raise HistoryError(f"{path}: needs From:, Date: and Subject: headers like `git format-patch` writes")
    try:
        date = email.utils.parsedate_to_datetime(headers["Date"])
    except (TypeError, ValueError):
        raise HistoryError(f"{path}: cannot read the date {headers['Date']!r}; write RFC 2822") from None
    return Mail(headers["Author"], headers["Email"], date, message)


def _redate(dates: Sequence[datetime], now: datetime) -> list[datetime]:
    """The dates moved into the days before ``now``, in the same order and proportions."""
    now = now if now.tzinfo is not None else now.astimezone()
    newest = now - NEWEST_AGE
    first, last = min(dates), max(dates)
    scale = (OLDEST_AGE - NEWEST_AGE) / (last - first) if last > first else 0.0
    # Whole minutes: builds made within the same minute get the same dates, hence the same SHAs.
    return [(newest - (last - date) * scale).replace(second=0, microsecond=0) for date in dates]


# Exporting


@dataclass(frozen=True)
class _Commit:
    """A release as a repository holds it, before export names its file."""

    branch: str
    tag: str | None
    sha: str


def _require_exportable(repo: Path) -> None:
    if not repo.is_dir():
        raise HistoryError(f"{repo} does not exist; create it with `python -m {MODULE} checkout {repo}`")
    try:
        top = _git(["rev-parse", "--show-toplevel"], cwd=repo)
    except HistoryError:
        top = ""
    if not top or Path(top).resolve() != repo:
        raise HistoryError(f"{repo} is not the top of a working repository; export the one `checkout` made")
    in_progress = {"rebase-merge": "rebase", "rebase-apply": "rebase or am", "MERGE_HEAD": "merge",
                   "CHERRY_PICK_HEAD": "cherry-pick", "REVERT_HEAD": "revert"}
    for marker, what in in_progress.items():
        if (repo / _git(["rev-parse", "--git-path", marker], cwd=repo)).exists():
            raise HistoryError(f"a {what} is in progress in {repo}: finish or abort it, then export again")
    changes = _git(["status", "--porcelain"], cwd=repo)
    if changes:
        raise HistoryError(
            f"{repo} has uncommitted changes, which export would leave out:\n{changes}\n"
            "commit them (`git commit --amend` adds them to the release checked out) or discard them"
        )


def _read_history(repo: Path) -> list[_Commit]:
    """Every release in ``repo``, in series order: main's, each followed by the branches it starts."""
    if not _lines(repo, ["for-each-ref", f"refs/heads/{MAIN}"]):
        raise HistoryError(f"{repo} has no branch {MAIN}; export the repository `checkout` made")
    main = _lines(repo, ["rev-list", "--reverse", "--first-parent", MAIN])
    merges = _lines(repo, ["rev-list", "--min-parents=2", "--first-parent", MAIN])
    if merges:
        raise HistoryError(
            f"{MAIN} in {repo} has merge commits ({', '.join(sha[:12] for sha in merges)}), but a series is "
            f"one commit per release: rebase {MAIN} so that it is linear, then export again"
        )
    subjects = {_subject(repo, sha): sha for sha in main}
    starts: dict[str, list[_Commit]] = {sha: [] for sha in main}
    branches = set(_lines(repo, ["for-each-ref", "--format=%(refname:short)", "refs/heads"])) - {MAIN}
    for branch in sorted(branches):
        fork, own = _branch_commits(repo, branch, subjects)
        starts[fork].extend(_Commit(branch, None, sha) for sha in own)
    ordered = [commit for sha in main for commit in (_Commit(MAIN, None, sha), *starts[sha])]
    tags = _tags(repo, [commit.sha for commit in ordered])
    return [_Commit(commit.branch, tags.get(commit.sha), commit.sha) for commit in ordered]


def _branch_commits(repo: Path, branch: str, subjects: Mapping[str, str]) -> tuple[str, list[str]]:
    """The main commit ``branch`` starts from, and the commits it adds, oldest first."""
    try:
        fork = _git(["merge-base", MAIN, branch], cwd=repo)
    except HistoryError:
        raise HistoryError(
            f"branch {branch} in {repo} shares no commit with {MAIN}: delete it "
            f"(git -C {repo} branch -D {branch}) or rebase it onto {MAIN}, then export again"
        ) from None
    own = _lines(repo, ["rev-list", "--reverse", "--topo-order", f"{fork}..{branch}"])
    if not own:
        raise HistoryError(
            f"branch {branch} in {repo} adds no commit to {MAIN} (it points at a release on {MAIN} or was "
            f"merged into it): delete it (git -C {repo} branch -D {branch}) or commit to it, then export "
            "again"
        )
    if _lines(repo, ["rev-list", "--min-parents=2", f"{fork}..{branch}"]):
        raise HistoryError(f"branch {branch} in {repo} has merge commits: rebase it so that it is linear")
    # A rebase of main leaves the branch on the commits it replaced: same subjects, other SHAs.
    stale = [sha for sha in own if _subject(repo, sha) in subjects]
    if stale:
        old, new = stale[-1][:12], subjects[_subject(repo, stale[-1])][:12]
        raise HistoryError(
            f"branch {branch} in {repo} still starts from {old}, which a rebase of {MAIN} replaced with "
            f"{new} (same subject): move it onto {MAIN} with `git -C {repo} rebase --onto {new} {old} "
            f"{branch}`, then export again"
        )
    return fork, own


def _tags(repo: Path, commits: Sequence[str]) -> dict[str, str]:
    """The tag of each release that has one, by commit."""
    in_series = set(commits)
    by_subject: dict[str, list[str]] = {}
    for sha in commits:
        by_subject.setdefault(_subject(repo, sha), []).append(sha)
    tags: dict[str, str] = {}
    # %(*objectname) is the commit an annotated tag points at; empty for a lightweight tag.
    listing = ["for-each-ref", "--format=%(refname:short) %(objectname) %(*objectname)", "refs/tags"]
    for line in _lines(repo, listing):
        tag, target = line.split()[0], line.split()[-1]
        commit = target
        if commit not in in_series:
            # Left behind by a rebase: the release is the commit that has its subject now.
            candidates = by_subject.get(_subject(repo, target), [])
            if len(candidates) != 1:
                raise HistoryError(
                    f"tag {tag} in {repo} points at {target[:12]}, which is on no branch, and no single "
                    f"release has its subject: point it at its release (git -C {repo} tag -f -a {tag} -m "
                    f"'jobapp {tag}' COMMIT) or delete it (git -C {repo} tag -d {tag}), then export again"
                )
            commit = candidates[0]
        if commit in tags:
            raise HistoryError(
                f"tags {tags[commit]} and {tag} in {repo} both name release {commit[:12]}, but a release has "
                f"at most one tag: delete one (git -C {repo} tag -d TAG), then export again"
            )
        tags[commit] = tag
    return tags


def _require_base_is_app_tree(repo: Path, base: str) -> None:
    with tempfile.TemporaryDirectory(prefix="jobapp-base-") as scratch:
        tree = Path(scratch) / "tree"
        shutil.copytree(APP_TREE, tree, ignore=shutil.ignore_patterns(*IGNORED))
        # APP_TREE's tree id as a build commits it, through a scratch index: repo's own is untouched.
        env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        _git(["--work-tree", str(tree), "add", "--all"], cwd=repo, env=env)
        app_tree = _git(["write-tree"], cwd=repo, env=env)
    if app_tree != _git(["rev-parse", f"{base}^{{tree}}"], cwd=repo):
        changed = _git(["diff", "--stat", app_tree, f"{base}^{{tree}}"], cwd=repo)
        raise HistoryError(
            f"v1 in {repo} ({base[:12]}) differs from {APP_TREE}, which is v1:\n{changed}\n"
            "v1 is that directory, not a patch: make the same change there, then export again"
        )


def _write_series(repo: Path, history: Sequence[_Commit], staging: Path) -> list[Release]:
    base, *patches = history
    # `git log --format=email` is format-patch's header; the zero SHA, as --zero-commit writes it,
    # keeps the file unchanged when an earlier release changes.
    header = _git(["log", "-1", "--format=email", base.sha], cwd=repo)
    slug = _git(["log", "-1", "--format=%f", base.sha], cwd=repo)
    series = [Release(f"0000-{slug[:52]}.msg", base.branch, base.tag)]
    header = re.sub(r"\AFrom [0-9a-f]{40} ", f"From {'0' * 40} ", header)
    (staging / series[0].file).write_text(header + "\n", encoding="utf-8")
    for number, commit in enumerate(patches, start=1):
        written = _git(
            ["format-patch", "--zero-commit", "--no-signature", "--no-numbered", "--find-renames",
             "--start-number", str(number), "--output-directory", str(staging), "-1", commit.sha],
            cwd=repo,
        )
        series.append(Release(Path(written).name, commit.branch, commit.tag))
    file_width = max(len(release.file) for release in series)
    branch_width = max(len(release.branch) for release in series)
    rows = [
        f"{release.file:<{file_width}}  {release.branch:<{branch_width}}  {release.tag or ''}".rstrip()
        for release in series
    ]
    (staging / SERIES).write_text(SERIES_HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return series


def _verify(staging: Path, repo: Path, history: Sequence[_Commit], scratch: Path) -> None:
    work = scratch / "replay"
    try:
        _, replayed = _replay(staging, work, None)
    except HistoryError as exc:
        raise HistoryError(f"the exported series does not replay, so nothing was written: {exc}") from None
    _git(["fetch", "--quiet", str(repo), "+refs/heads/*:refs/exported/*"], cwd=work)
    for commit, sha in zip(history, replayed, strict=True):
        wanted, got = _facts(work, commit.sha), _facts(work, sha)
        for name in wanted:
            if wanted[name] != got[name]:
                raise HistoryError(
                    f"the exported series does not reproduce {commit.sha[:12]} of {repo}: its {name} comes "
                    f"out as {got[name]!r} instead of {wanted[name]!r}, so nothing was written. git am "
                    "rewrites some messages (a subject starting with [brackets], a line starting with "
                    "`From `): reword that commit, then export again"
                )


def _facts(work: Path, sha: str) -> dict[str, str]:
    """What the series must reproduce of a release: the committer and commit dates may differ."""
    return {
        "tree": _git(["rev-parse", f"{sha}^{{tree}}"], cwd=work),
        "author, date and message": _git(["log", "-1", "--format=%an <%ae>%n%aI%n%B", sha], cwd=work),
    }


def _subject(repo: Path, sha: str) -> str:
    return _git(["log", "-1", "--format=%s", sha], cwd=repo)


# git


def _lines(cwd: Path, args: list[str]) -> list[str]:
    return _git(args, cwd=cwd).splitlines()


def _git(
    args: list[str],
    cwd: Path,
    date: datetime | str = "2024-01-01T00:00:00+00:00",  # for commands that make no commit
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> str:
    # A clean environment: the caller's git config, hooks or GIT_DIR must not change the SHAs.
    stamp = date.isoformat() if isinstance(date, datetime) else date
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "LC_ALL": "C",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_DATE": stamp,
        **(env or {}),
    }
    result = run(Command.of(["git", *args], cwd=cwd, env=clean, timeout=300), step=f"git {args[0]}",
                 error=one_line(HistoryError),
                 advice=Advice(start="install git", slow="git did not finish in 300 s"), input=stdin)
    if not result.ok:
        # git's hints are about resuming in place; a failed build leaves nothing to resume in.
        lines = (result.stderr or result.stdout).strip().splitlines()
        output = "\n".join(line for line in lines if not line.startswith("hint: "))
        raise HistoryError(f"git {' '.join(args)} failed in {cwd}: {output}")
    return result.stdout.strip()


def _require_empty(dest: Path, what: str) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HistoryError(f"{dest} is not empty; {what} needs a new directory: remove it or choose another")


# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Change jobapp's release history: check it out, change it with git, export it.",
        epilog=f"The workflow and the rules export follows are in {MODULE}'s docstring.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    checkout_parser = commands.add_parser("checkout", help="build the series into a new repository DIR")
    checkout_parser.add_argument("dir", type=Path, metavar="DIR", help="a directory that is absent or empty")
    export_parser = commands.add_parser("export", help="write the history in DIR back as the series")
    export_parser.add_argument("dir", type=Path, metavar="DIR", help="a repository `checkout` made, changed")
    export_parser.add_argument(
        "--to", type=Path, default=RELEASES_DIR, metavar="RELEASES",
        help=f"where to write the patches and the series file (default: {RELEASES_DIR})",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "checkout":
            refs = checkout(args.dir)
            print(f"{args.dir}: {', '.join(refs)}; commit your changes there, then run `export {args.dir}`")
        else:
            for release in export(args.dir, args.to):
                print(f"{release.file}  {release.branch}  {release.tag or ''}".rstrip())
            print(f"written to {args.to}; review it with `git diff`")
    except HistoryError as exc:
        print(f"error: {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
