"""The release's source: refs, SHAs, the workspace checkout.

A ref is user input. It is checked against a strict pattern before git sees it, resolved with
`rev-parse --verify --end-of-options`, and every later command acts on the 40-hex SHA. Git runs in one
place, `_git`, through GitPython (`git.Repo(workspace).git.<command>(...)`), never through a shell:

- no option that can make git run a program (GitPython's lists: `--upload-pack`, `--exec`, `-c`, ...)
  and no command transport (`ext::`) reaches git; InvalidInput before it starts
- git gets nothing of our environment but `git_environment` (no prompt, a fixed PATH, the workspace
  as HOME so nobody's ~/.gitconfig steers a deploy), and dies with the thread that started it
- it is killed after GIT_TIMEOUT seconds
- what goes wrong is a GitError naming the step, git's last error line (secrets masked), and what to do
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import git

from deployments.config import EnvironmentConfig
from deployments.errors import DeployError, InvalidInput, PreflightError
from deployments.secrets import redact
from tasks.processes import Finished, dies_with_us
from tasks.steps import change_step, read_step

REF_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
SHA_PATTERN = re.compile(r"^[0-9a-f]{40}$")
GIT_TIMEOUT = 120
# Options with which git runs a program named on its command line, as GitPython refuses them for
# fetch, push, ls-remote and clone; none of ours needs one.
UNSAFE_OPTIONS = sorted({*git.Remote.unsafe_git_fetch_options, *git.Remote.unsafe_git_push_options,
                         *git.Git.unsafe_git_ls_remote_options, *git.Repo.unsafe_git_clone_options})
ENV = "/usr/bin/env"
# env's exit codes for a program it cannot run or cannot find.
CANNOT_START = (126, 127)
WORKSPACE_ADVICE = "check source.workspace in the environment file"
START_ADVICE = "install git on the worker, in /usr/local/bin, /usr/bin or /bin"
SLOW_ADVICE = "check that the repository is reachable, then run again"
FAILED_ADVICE = "check source.repository and source.workspace, then run again"


class GitError(DeployError):
    pass


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    author: str
    committed_at: datetime


def validate_ref(ref: str) -> str:
    """`ref` if it can only be a branch, tag or SHA name; InvalidInput before anything is touched."""
    problem = None
    if not isinstance(ref, str) or not REF_PATTERN.fullmatch(ref):
        problem = "it must start with a letter or digit and use only letters, digits, . _ / -"
    elif ".." in ref or "@{" in ref or "//" in ref:
        problem = "'..', '@{' and '//' are not allowed"
    elif ref.endswith((".", "/", ".lock")):
        problem = "it may not end with '.', '/' or '.lock'"
    if problem:
        shown = repr(ref)[:80] if isinstance(ref, str) else type(ref).__name__
        raise InvalidInput("validate ref", f"{shown} is not a valid ref: {problem}",
                           "pass a branch, a tag or a commit SHA, e.g. main or v2")
    return ref


def git_environment(workspace: Path) -> dict[str, str]:
    """Everything git and its hooks get of an environment."""
    return {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workspace),
            "LC_ALL": "C"}


class _Git(git.Git):
    """GitPython's git, started as `env -i VAR=... git ...`. GitPython gives each child a copy of
    os.environ with its own variables added and cannot take one away (gitpython-developers/GitPython#924);
    `env -i` is what keeps our API keys, secrets and GIT_* variables from git and its hooks."""

    def __init__(self, working_dir: Any = None) -> None:
        super().__init__(working_dir)
        self.set_persistent_git_options(c="advice.detachedHead=false")

    def execute(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        variables = [f"{name}={value}" for name, value in git_environment(Path(str(self.working_dir))).items()]
        return super().execute([ENV, "-i", *variables, *command], *args, preexec_fn=dies_with_us(), **kwargs)


class _Repo(git.Repo):
    GitCommandWrapperType = _Git


def _git(workspace: Path, command: str, *args: str, step: str, check: bool = True) -> Finished:
    """`git command args` in the workspace; with `check`, a non-zero exit is a GitError too."""
    _refuse_unsafe(args, step)
    try:
        repo = _Repo(workspace, expand_vars=False)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
        problem = "does not exist" if isinstance(exc, git.NoSuchPathError) else "is not a git checkout"
        raise GitError(step, f"{workspace} {problem}", WORKSPACE_ADVICE) from None
    started = time.monotonic()
    try:
        status, out, err = getattr(repo.git, command.replace("-", "_"))(
            *args, with_extended_output=True, with_exceptions=False, stdout_as_string=False,
            kill_after_timeout=GIT_TIMEOUT)
    except git.GitCommandNotFound as exc:
        raise GitError(step, f"cannot start git ({exc.status})", START_ADVICE) from None
    done = Finished(status, _text(out), _text(err), time.monotonic() - started)
    if status == -signal.SIGKILL and done.seconds >= GIT_TIMEOUT:
        raise GitError(step, f"git {command} ran longer than {GIT_TIMEOUT:g} s", SLOW_ADVICE)
    if status in CANNOT_START:
        raise GitError(step, f"cannot start git ({done.error_line()})", START_ADVICE)
    if check and not done.ok:
        raise GitError(step, f"git {command} failed: {done.error_line()}", FAILED_ADVICE)
    return done


def _refuse_unsafe(args: tuple[str, ...], step: str) -> None:
    for arg in args:
        try:
            if arg.startswith("-"):
                git.Git.check_unsafe_options([arg], UNSAFE_OPTIONS)
            else:
                git.Git.check_unsafe_protocols(arg)
        except (git.UnsafeOptionError, git.UnsafeProtocolError):
            raise InvalidInput(step, f"{redact(arg)[:80]!r} could make git run a program",
                               "check source.remote and source.repository in the environment file") from None


def _text(output: str | bytes) -> str:
    """What git printed, as UTF-8 with undecodable bytes replaced (GitPython keeps them as surrogates)."""
    raw = output if isinstance(output, bytes) else output.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")


def fetch(config: EnvironmentConfig) -> None:
    """Bring the remote's branches and tags into the workspace; a moved tag is taken as it is now."""
    ws = config.source.workspace
    _git(ws, "fetch", "--quiet", "--prune", "--tags", "--force", "--", config.source.remote,
         f"+refs/heads/*:refs/remotes/{config.source.remote}/*", step="fetch release")


def resolve(config: EnvironmentConfig, ref: str) -> str:
    """The commit SHA `ref` names: a remote branch first, then a tag, then a commit SHA (full or short)."""
    ref = validate_ref(ref)
    remote = config.source.remote
    for candidate in (f"refs/remotes/{remote}/{ref}", f"refs/tags/{ref}", ref):
        if candidate == ref and not re.fullmatch(r"[0-9a-f]{7,40}", ref):
            continue
        result = _git(config.source.workspace, "rev-parse", "--verify", "--quiet", "--end-of-options",
                      f"{candidate}^{{commit}}", step="resolve ref", check=False)
        if result.returncode == 0 and SHA_PATTERN.fullmatch(result.stdout.strip()):
            return result.stdout.strip()
    raise PreflightError("resolve ref", f"{ref!r} is not a branch, tag or commit of {config.source.repository}",
                         "push it first, or check the spelling")


def is_merged(config: EnvironmentConfig, sha: str) -> bool:
    """True when `sha` is reachable from the remote's release branch."""
    branch = f"refs/remotes/{config.source.remote}/{config.source.branch}"
    result = _git(config.source.workspace, "merge-base", "--is-ancestor", _sha(sha), branch,
                  step="check merged to main", check=False)
    if result.returncode not in (0, 1):
        raise GitError("check merged to main", f"git merge-base failed: {result.error_line()}",
                       f"fetch {config.source.branch} and run again")
    return result.returncode == 0


def branch_head(config: EnvironmentConfig) -> str | None:
    """The SHA of the release branch as the origin repository itself has it (None: no such branch)."""
    out = _git(config.source.workspace, "ls-remote", "--heads", "--", config.source.repository,
               f"refs/heads/{config.source.branch}", step="check source repository").stdout.split()
    return out[0] if out else None


def current_sha(workspace: Path) -> str:
    return _git(workspace, "rev-parse", "--verify", "HEAD", step="read live release").stdout.strip()


def checked_out_at(workspace: Path, head: str) -> float | None:
    """When the workspace's HEAD moved to `head` (epoch seconds), read from HEAD's reflog: git writes the
    move after the files, so the log's modification time is no earlier than the checkout. None when the
    log's last entry is not that move (no reflog, or HEAD moved without one)."""
    relative = _git(workspace, "rev-parse", "--git-path", "logs/HEAD", step="read live release").stdout.strip()
    try:
        with open(workspace / relative, "rb") as log:
            size = os.fstat(log.fileno()).st_size
            # Only the last entry counts: a reflog of years of checkouts is not read whole.
            log.seek(max(0, size - 4096))
            last = log.read().rstrip(b"\n").rpartition(b"\n")[2]
            moved_at = os.fstat(log.fileno()).st_mtime
    except OSError:
        return None
    return moved_at if last.split(b" ")[1:2] == [head.encode()] else None


def local_changes(workspace: Path) -> list[str]:
    """Tracked files changed by hand in the workspace: a deploy would silently discard them."""
    out = _git(workspace, "status", "--porcelain", "--untracked-files=no", step="check workspace").stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def checkout(config: EnvironmentConfig, sha: str) -> None:
    # A checkout killed mid-way leaves index.lock behind; the deploy lock guarantees no git
    # command of ours is running in this workspace now, so the lock file is stale.
    (config.source.workspace / ".git" / "index.lock").unlink(missing_ok=True)
    _git(config.source.workspace, "checkout", "--quiet", "--force", "--detach", _sha(sha), step="check out release")


def commit(config: EnvironmentConfig, sha: str) -> Commit:
    out = _git(config.source.workspace, "show", "-s", "--format=%H%x00%s%x00%an%x00%ct", _sha(sha),
               step="read commit").stdout.strip()
    full, subject, author, stamp = out.split("\x00")
    return Commit(full, subject, author, datetime.fromtimestamp(int(stamp), tz=timezone.utc))


def commits_between(config: EnvironmentConfig, old: str, new: str, limit: int = 50) -> list[Commit]:
    """The commits `new` brings that `old` does not have, newest first."""
    out = _git(config.source.workspace, "log", f"--max-count={limit}", "--format=%H%x00%s%x00%an%x00%ct",
               f"{_sha(old)}..{_sha(new)}", step="list commits").stdout
    commits = []
    for line in out.splitlines():
        full, subject, author, stamp = line.split("\x00")
        commits.append(Commit(full, subject, author, datetime.fromtimestamp(int(stamp), tz=timezone.utc)))
    return commits


def add_worktree(config: EnvironmentConfig, sha: str, dest: Path) -> Path:
    """A scratch checkout of `sha` for the release's tests, scan and migration rehearsal."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        remove_worktree(config, dest)
    _git(config.source.workspace, "worktree", "add", "--quiet", "--detach", "--", str(dest), _sha(sha),
         step="prepare scratch worktree")
    return dest


def remove_worktree(config: EnvironmentConfig, dest: Path) -> None:
    _git(config.source.workspace, "worktree", "remove", "--force", "--", str(dest),
         step="remove scratch worktree", check=False)
    shutil.rmtree(dest, ignore_errors=True)
    _git(config.source.workspace, "worktree", "prune", step="remove scratch worktree", check=False)


def _sha(sha: str) -> str:
    if not SHA_PATTERN.fullmatch(sha):
        raise InvalidInput("git", f"{sha!r} is not a 40-hex commit SHA", "resolve the ref first")
    return sha


@dataclass(frozen=True)
class ResolvedRelease:
    ref: str
    sha: str
    subject: str
    committed_at: datetime
    live_sha: str

    @property
    def short(self) -> str:
        return self.sha[:12]

    def describe(self) -> str:
        return f"{self.ref} = {self.short} ({self.subject}); live: {self.live_sha[:12]}"


@read_step("fetch-release", retries=2)
def fetch_release(config: EnvironmentConfig) -> str:
    fetch(config)
    return f"fetched {config.source.remote} into {config.source.workspace}"


@read_step("resolve-release", retries=0)
def resolve_release(config: EnvironmentConfig, ref: str) -> ResolvedRelease:
    sha = resolve(config, ref)
    info = commit(config, sha)
    return ResolvedRelease(ref, sha, info.subject, info.committed_at, current_sha(config.source.workspace))


@read_step("check-merged-to-main", retries=0)
def check_merged_to_main(config: EnvironmentConfig, sha: str) -> str:
    """Prerequisite: code changes merged to the release branch."""
    if not is_merged(config, sha):
        raise PreflightError("check merged to main", f"{sha[:12]} is not on {config.source.remote}/"
                             f"{config.source.branch}", f"merge it to {config.source.branch} first; nothing was changed")
    return f"{sha[:12]} is on {config.source.remote}/{config.source.branch}"


@read_step("check-workspace", retries=0)
def check_workspace(config: EnvironmentConfig) -> str:
    changed = local_changes(config.source.workspace)
    if changed:
        raise PreflightError("check workspace", f"{config.source.workspace} has local changes "
                             f"({', '.join(changed[:5])})", "commit them to the repository or discard them; "
                             "a deploy would silently overwrite them")
    return "no local changes"


@change_step("pull-release")
def pull_release(config: EnvironmentConfig, sha: str) -> str:
    """Runbook step 4 (code): check out the resolved SHA in the workspace."""
    checkout(config, sha)
    now = current_sha(config.source.workspace)
    if now != sha:
        raise GitError("pull release", f"the workspace is at {now[:12]} after checking out {sha[:12]}",
                       "check the workspace by hand")
    return f"checked out {sha[:12]}"
