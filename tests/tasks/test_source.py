"""Refs and checkouts on real git repositories: a bare origin and a working clone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import InvalidInput, PreflightError
from tasks import source


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
