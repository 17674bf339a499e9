"""Refs and checkouts on real git repositories: a bare origin and a working clone."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import pytest

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import InvalidInput, PreflightError
from tasks import source
from tasks.source import GitError


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t.invalid", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
                          ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[EnvironmentConfig, dict[str, str]]:
    """origin.git with main (c1 -> c2, tagged v1, v2), a feature branch not merged; a clone at c1."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    shas = {}
    for name in ("c1", "c2"):
        (seed / "app.py").write_text(f"VERSION = {name!r}\n")
        git(seed, "add", "app.py")
        git(seed, "commit", "-q", "-m", f"release {name}")
        shas[name] = git(seed, "rev-parse", "HEAD")
    git(seed, "tag", "v1", shas["c1"])
    git(seed, "tag", "-a", "-m", "v2", "v2", shas["c2"])
    git(seed, "checkout", "-q", "-b", "feature/x")
    (seed / "app.py").write_text("VERSION = 'feature'\n")
    git(seed, "commit", "-qam", "unmerged work")
    shas["feature"] = git(seed, "rev-parse", "HEAD")
    git(tmp_path, "clone", "-q", "--bare", str(seed), "origin.git")
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), "app")
    git(tmp_path / "app", "checkout", "-q", "--detach", shas["c1"])
    template = (Path(__file__).resolve().parents[2] / "deployments" / "production.toml").read_text()
    text = template.replace("../.sandbox", str(tmp_path)).replace('name = "production"', 'name = "prod"')
    text = text.replace(f"{tmp_path}/production/app", f"{tmp_path}/app")
    (tmp_path / "prod.toml").write_text(text)
    return load_environment_file(tmp_path / "prod.toml"), shas


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/pwned", "-f", "..", "main..v2", "a..b", "HEAD@{1}",
                                 "", " main", "main ", "x" * 201, "feature//x", "v2.lock", "main/", "ma;in",
                                 "$(id)", "ref\n"])
def test_invalid_refs_are_refused_before_git(ref: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        source.validate_ref(ref)
    assert "validate ref" in str(caught.value) and "pass a branch, a tag or a commit SHA" in str(caught.value)


def test_refs_resolve_to_shas(repo: tuple[EnvironmentConfig, dict[str, str]]) -> None:
    config, shas = repo
    source.fetch(config)
    assert source.resolve(config, "main") == shas["c2"]
    assert source.resolve(config, "v1") == shas["c1"]
    assert source.resolve(config, "v2") == shas["c2"]  # annotated tag peeled to its commit
    assert source.resolve(config, shas["c1"][:10]) == shas["c1"]
    assert source.resolve(config, "feature/x") == shas["feature"]
    with pytest.raises(PreflightError, match="'nope' is not a branch, tag or commit"):
        source.resolve(config, "nope")


def test_merged_to_main(repo: tuple[EnvironmentConfig, dict[str, str]]) -> None:
    config, shas = repo
    source.fetch(config)
    assert source.is_merged(config, shas["c1"]) and source.is_merged(config, shas["c2"])
    assert not source.is_merged(config, shas["feature"])
    with pytest.raises(PreflightError, match="is not on origin/main"):
        source.check_merged_to_main.fn(config, shas["feature"])


def test_checkout_and_local_changes(repo: tuple[EnvironmentConfig, dict[str, str]]) -> None:
    config, shas = repo
    source.fetch(config)
    ws = config.source.workspace
    assert source.current_sha(ws) == shas["c1"]
    assert source.pull_release.fn(config, shas["c2"]) == f"checked out {shas['c2'][:12]}"
    assert source.current_sha(ws) == shas["c2"]
    (ws / "app.py").write_text("hotfix\n")
    assert source.local_changes(ws) == ["app.py"]
    with pytest.raises(PreflightError, match="has local changes"):
        source.check_workspace.fn(config)
    assert [c.subject for c in source.commits_between(config, shas["c1"], shas["c2"])] == ["release c2"]


def test_worktree_is_a_scratch_checkout(repo: tuple[EnvironmentConfig, dict[str, str]], tmp_path: Path) -> None:
    config, shas = repo
    tree = source.add_worktree(config, shas["c2"], tmp_path / "scratch" / "w")
    assert (tree / "app.py").read_text() == "VERSION = 'c2'\n"
    assert source.current_sha(config.source.workspace) == shas["c1"]  # the live checkout did not move
    source.remove_worktree(config, tree)
    assert not tree.exists()
    assert str(tree) not in git(config.source.workspace, "worktree", "list")


def test_git_commands_only_take_shas(repo: tuple[EnvironmentConfig, dict[str, str]]) -> None:
    config, _ = repo
    with pytest.raises(InvalidInput, match="is not a 40-hex commit SHA"):
        source.checkout(config, "main")


def with_source(config: EnvironmentConfig, **changes: str) -> EnvironmentConfig:
    return config.model_copy(update={"source": config.source.model_copy(update=changes)})


def test_branch_head_asks_the_origin_itself(repo: tuple[EnvironmentConfig, dict[str, str]]) -> None:
    config, shas = repo
    assert source.branch_head(config) == shas["c2"]  # the workspace has not fetched c2's main yet
    assert source.branch_head(with_source(config, branch="nope")) is None


def test_git_environment_is_data(tmp_path: Path) -> None:
    assert source.git_environment(tmp_path) == {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin",
                                                "HOME": str(tmp_path), "LC_ALL": "C"}


def test_git_and_its_hooks_get_nothing_of_our_environment(repo: tuple[EnvironmentConfig, dict[str, str]],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, shas = repo
    ws = config.source.workspace
    seen = tmp_path / "hook.env"
    hook = ws / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\nenv > {seen}\n")
    hook.chmod(0o755)
    # Each of these, were git to see it, would change what a deploy does: another repository, a
    # global configuration that turns the workspace's hooks off, a secret for git's children to read.
    xdg = tmp_path / "xdg"
    (xdg / "git").mkdir(parents=True)
    (xdg / "git" / "config").write_text(f"[core]\n\thooksPath = {tmp_path / 'no-hooks'}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(xdg / "git" / "config"))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "origin.git"))
    monkeypatch.setenv("PREFECT_API_KEY", "not-for-git")
    source.fetch(config)
    source.checkout(config, shas["c2"])
    monkeypatch.delenv("GIT_DIR")
    assert source.current_sha(ws) == shas["c2"]
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert (env["HOME"], env["GIT_TERMINAL_PROMPT"]) == (str(ws), "0")
    assert env["PATH"].endswith(":/usr/local/bin:/usr/bin:/bin")  # after git's own exec path
    assert not {"PREFECT_API_KEY", "XDG_CONFIG_HOME", "GIT_CONFIG_GLOBAL"} & set(env)


def test_git_is_started_with_argv_as_data_and_no_credential(repo: tuple[EnvironmentConfig, dict[str, str]],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    config, _ = repo
    ws = config.source.workspace
    git(ws, "remote", "set-url", "origin", "https://deploy:s3cret-token@127.0.0.1:9/app.git")
    caplog.set_level(logging.DEBUG, logger="git.cmd")
    with pytest.raises(GitError) as caught:
        source.fetch(config)
    started = [record.args[0] for record in caplog.records if record.msg.startswith("Popen(")]  # type: ignore[index]
    assert started == [["/usr/bin/env", "-i", "GIT_TERMINAL_PROMPT=0", "PATH=/usr/local/bin:/usr/bin:/bin",
                        f"HOME={ws}", "LC_ALL=C", "git", "-c", "advice.detachedHead=false", "fetch", "--quiet",
                        "--prune", "--tags", "--force", "--", "origin", "+refs/heads/*:refs/remotes/origin/*"]]
    assert caught.value.step == "fetch release" and caught.value.cause.startswith("git fetch failed: ")
    assert "s3cret-token" not in str(caught.value) + caplog.text


@pytest.mark.parametrize("ref", ["--upload-pack=touch {marker}", "-u", "--exec=touch {marker}"])
def test_an_unsafe_option_smuggled_as_a_ref_is_refused_before_git_runs(
        repo: tuple[EnvironmentConfig, dict[str, str]], tmp_path: Path, ref: str) -> None:
    config, _ = repo
    marker = tmp_path / "pwned"
    fetch_head = config.source.workspace / ".git" / "FETCH_HEAD"
    with pytest.raises(InvalidInput, match="validate ref"):
        source.resolve(config, ref.format(marker=marker))
    with pytest.raises(InvalidInput, match="could make git run a program"):
        source.fetch(with_source(config, remote=ref.format(marker=marker)))
    assert not marker.exists() and not fetch_head.exists(), "git ran"


def test_a_command_transport_as_the_remote_is_refused_before_git_runs(
        repo: tuple[EnvironmentConfig, dict[str, str]], tmp_path: Path) -> None:
    config, _ = repo
    marker = tmp_path / "pwned"
    with pytest.raises(InvalidInput) as caught:
        source.fetch(with_source(config, remote=f"ext::sh -c touch% {marker}"))
    assert caught.value.step == "fetch release"
    assert not marker.exists() and not (config.source.workspace / ".git" / "FETCH_HEAD").exists()


def test_git_past_its_limit_is_killed_and_fails_the_step(repo: tuple[EnvironmentConfig, dict[str, str]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = repo
    monkeypatch.setattr(source, "GIT_TIMEOUT", 1)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts the connection, never answers
        git(config.source.workspace, "remote", "add", "silent", f"git://127.0.0.1:{silent.getsockname()[1]}/app")
        started = time.monotonic()
        with pytest.raises(GitError) as caught:
            source.fetch(with_source(config, remote="silent"))
        assert time.monotonic() - started < 10
        connection, _ = silent.accept()
        connection.settimeout(10)
        while connection.recv(4096):  # git's request, then the end of a connection whose process is gone
            pass
    assert str(caught.value) == ("fetch release: git fetch ran longer than 1 s. "
                                 "check that the repository is reachable, then run again")


def test_git_error_line_reaches_the_message(repo: tuple[EnvironmentConfig, dict[str, str]], tmp_path: Path) -> None:
    config, shas = repo
    unknown = "0123456789" * 4
    with pytest.raises(GitError) as caught:
        source.checkout(config, unknown)
    assert str(caught.value) == (f"check out release: git checkout failed: fatal: reference is not a tree: {unknown}. "
                                 "check source.repository and source.workspace, then run again")
    with pytest.raises(GitError) as caught:
        source.is_merged(with_source(config, branch="nope"), shas["c2"])
    assert caught.value.cause.startswith("git merge-base failed: fatal: ")
    with pytest.raises(GitError, match=f"read live release: {tmp_path / 'nowhere'} does not exist"):
        source.current_sha(tmp_path / "nowhere")
    with pytest.raises(GitError, match=f"read live release: {tmp_path} is not a git checkout"):
        source.current_sha(tmp_path)


def test_a_git_that_cannot_start_fails_the_step_saying_so(repo: tuple[EnvironmentConfig, dict[str, str]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = repo
    monkeypatch.setattr(source._Git, "GIT_PYTHON_GIT_EXECUTABLE", "no-such-git")
    with pytest.raises(GitError) as caught:
        source.current_sha(config.source.workspace)
    assert caught.value.cause.startswith("cannot start git (") and "no-such-git" in caught.value.cause
    assert caught.value.action.startswith("install git")
