"""Each release's own environment ([dependencies]): built once per set of dependency files, reused while
they do not change, made live by one link, and followed by gunicorn's USR2 re-exec, for real."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import ConfigError, PreflightError
from records.ledger import Ledger
from tasks.app_commands import expand_argv
from tasks.dependencies import ensure_environment, prune_environments, switch_environment
from tasks.release_environments import MARKER, interpreter, live_environment, release_environment
from tests.conftest import free_ports
from tests.tasks.gunicorn_app import APP as RELEASE_APP
from tests.tasks.gunicorn_app import WORKERS, App, gunicorn_conf
from tests.wheels import build_wheel

PYTHON = Path(sys.executable)
BASE_PYTHON = Path(os.path.realpath(sys.executable))
INSTALL = Path(__file__).with_name("install_shared.py")

# The app serves the version of the library its environment holds.
APP = RELEASE_APP.replace('RELEASE = (Path(__file__).resolve().parent / "release.txt").read_text().strip()',
                          "import greetlib\n\nRELEASE = greetlib.__version__")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheelhouse")
    for version in ("1.0", "2.0"):
        build_wheel(directory, "greetlib", version, {"greetlib/__init__.py": f'__version__ = "{version}"\n'})
    return directory


INSTALL_COMMAND = f'["{PYTHON}", "{INSTALL}", "{{python}}"]'
CHECK_COMMAND = f'["{PYTHON}", "-m", "pip", "--python", "{{python}}", "check"]'


def environment_file(root: Path, wheelhouse: Path, port: int = 8000, dependencies: str = "", service: str = "",
                     install: str = INSTALL_COMMAND, check: str = CHECK_COMMAND) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "production.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "production"
        state_dir = "state"

        [source]
        repository = "origin.git"
        workspace = "workspace"

        [service]
        base_url = "http://127.0.0.1:{port}"
        start_command = ["{{python}}", "{{bin}}/gunicorn", "-c", "gunicorn.conf.py"]
        pid_file = "run/gunicorn.pid"
        startup_log = "logs/app.log"
        grace_seconds = 1
        workers = {WORKERS}
        {service}

        [database]
        url = {{ env = "DEPENDENCIES_TEST_DATABASE_URL" }}

        [backups]
        directory = "backups"

        [dependencies]
        directory = "envs"
        python = "{BASE_PYTHON}"
        venv_options = ["--without-pip"]
        install_command = {install}
        check_command = {check}
        env = {{ PIP_NO_INDEX = "1", PIP_FIND_LINKS = "{wheelhouse}" }}
        keep = 2
        {dependencies}
    """))
    return path


def release(config: EnvironmentConfig, requirements: str) -> Path:
    """The workspace holding a release whose dependencies are `requirements`."""
    workspace = config.source.workspace
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "requirements.txt").write_text(requirements)
    return workspace


def greetlib_in(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import greetlib; print(greetlib.__version__)"], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def config(tmp_path: Path, wheelhouse: Path) -> EnvironmentConfig:
    return load_environment_file(environment_file(tmp_path, wheelhouse))


@pytest.mark.parametrize(("dependencies", "service", "refused"), [
    ("", 'python = "/usr/bin/python3"', "service.python: leave it out with [dependencies]"),
    ("", 'reload = "hup"', 'reload = "hup" keeps the running master'),
    ("", 'start_command = ["{bin}/gunicorn", "-c", "gunicorn.conf.py"]', "start the app with its interpreter first"),
    ('files = ["../requirements.txt"]', "", "a path in the app's directory"),
])
def test_a_file_that_would_run_a_release_in_the_wrong_environment_is_refused(
        tmp_path: Path, wheelhouse: Path, dependencies: str, service: str, refused: str) -> None:
    text = environment_file(tmp_path, wheelhouse, dependencies=dependencies).read_text()
    if service.startswith("start_command"):
        text = text.replace('start_command = ["{python}", "{bin}/gunicorn", "-c", "gunicorn.conf.py"]', service)
    elif service:
        text = text.replace("[service]\n", f"[service]\n{service}\n")
    (tmp_path / "production.toml").write_text(text)
    with pytest.raises(ConfigError) as refusal:
        load_environment_file(tmp_path / "production.toml")
    assert refused in str(refusal.value)


def test_the_apps_interpreter_is_the_live_environments(config: EnvironmentConfig, tmp_path: Path) -> None:
    assert config.service.python == tmp_path / "envs" / "current" / "bin" / "python"
    argv = expand_argv(config.service.start_command, config)
    assert argv[:2] == [str(tmp_path / "envs/current/bin/python"), str(tmp_path / "envs/current/bin/gunicorn")]


def test_an_environment_is_built_once_and_reused_while_the_dependency_files_do_not_change(
        config: EnvironmentConfig) -> None:
    workspace = release(config, "greetlib==1.0\n")
    first, seconds = ensure_environment(config, workspace)
    assert seconds is not None and first.complete and greetlib_in(first.python) == "1.0"
    again, seconds = ensure_environment(config, workspace)
    assert (again, seconds) == (first, None)
    release(config, "greetlib==2.0\n")
    second, seconds = ensure_environment(config, workspace)
    assert seconds is not None and second.key != first.key
    assert greetlib_in(second.python) == "2.0" and greetlib_in(first.python) == "1.0"  # the first is untouched


def test_a_scratch_tree_of_a_release_runs_in_that_releases_environment(config: EnvironmentConfig, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "requirements.txt").write_text("greetlib==2.0\n")
    with pytest.raises(PreflightError, match="is not built"):
        interpreter(config, tree)
    built, _ = ensure_environment(config, tree)
    assert interpreter(config, tree) == built.python
    assert expand_argv(["{python}", "-m", "pytest"], config, tree)[0] == str(built.python)
    assert interpreter(config) == config.service.python  # the workspace: the live one


def test_an_install_that_fails_leaves_nothing_behind_and_says_why_in_one_line(config: EnvironmentConfig) -> None:
    workspace = release(config, "greetlib==3.0\n")
    with pytest.raises(PreflightError) as failure:
        ensure_environment(config, workspace)
    message = str(failure.value)
    assert "the install failed" in message and "nothing was changed" in message and "\n" not in message
    assert not release_environment(config, workspace).path.exists()


def test_a_release_without_its_dependency_file_is_refused_before_anything_is_built(config: EnvironmentConfig) -> None:
    config.source.workspace.mkdir(parents=True)
    with pytest.raises(PreflightError, match="the release has no requirements.txt"):
        ensure_environment(config, config.source.workspace)
    assert not (config.source.workspace.parent / "envs").exists() or not any((config.source.workspace.parent / "envs").iterdir())


def test_a_build_cut_off_part_way_is_made_again(config: EnvironmentConfig) -> None:
    workspace = release(config, "greetlib==1.0\n")
    half = release_environment(config, workspace).path
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("not an interpreter")
    built, seconds = ensure_environment(config, workspace)
    assert seconds is not None and (built.path / MARKER).is_file() and greetlib_in(built.python) == "1.0"


def test_the_switch_is_one_link_and_old_environments_go_beyond_keep_but_never_the_live_or_a_recorded_one(
        tmp_path: Path, wheelhouse: Path) -> None:
    # What is installed does not matter here: an install that only runs the new interpreter.
    config = load_environment_file(environment_file(tmp_path, wheelhouse, install='["{python}", "-c", "pass"]',
                                                    check="[]"))
    workspace = release(config, "greetlib==1.0\n")
    keys = []
    for number in range(4):  # four releases, each with its own dependency files
        (workspace / "requirements.txt").write_text(f"greetlib==1.0\n# release {number}\n")
        environment, _ = ensure_environment(config, workspace)
        keys.append(environment.key)
        os.utime(environment.path / MARKER, (1_000_000 + number, 1_000_000 + number))
    assert "is live, was none" in switch_environment.fn(config, keys[0])
    assert os.readlink(config.dependencies.directory / "current") == keys[0]  # type: ignore[union-attr]
    assert live_environment(config).key == keys[0]  # type: ignore[union-attr]
    assert "stays live" in switch_environment.fn(config, keys[0])
    ledger = Ledger.for_state_dir(config.state_dir)
    recorded = ledger.open_release(environment="production", flow_run_id=None, flow_run_name=None, ref="r", reason="")
    ledger.update(recorded.id, environment_before=keys[1], environment_after=keys[3])
    assert prune_environments(config, keep={keys[0]}) == []  # the two newest, the live one, a rollback's target
    ledger.update(recorded.id, environment_before=None)
    assert prune_environments(config, keep={keys[0]}) == [keys[1]]
    assert sorted(p.name for p in config.dependencies.directory.iterdir() if not p.name.startswith(".")) == sorted(  # type: ignore[union-attr]
        [keys[0], keys[2], keys[3], "current"])


@pytest.mark.slow
def test_a_usr2_reload_moves_the_app_to_the_new_environment_and_a_switch_back_returns_it(
        tmp_path: Path, wheelhouse: Path) -> None:
    (port,) = free_ports(1)
    config = load_environment_file(environment_file(tmp_path, wheelhouse, port))
    workspace = release(config, "greetlib==1.0\n")
    (workspace / "app.py").write_text(APP)
    (workspace / "gunicorn.conf.py").write_text(
        gunicorn_conf(port, config.service.pid_file.parent, config.service.startup_log, "uvicorn"))
    old, _ = ensure_environment(config, workspace)
    switch_environment.fn(config)
    app = App(config)
    try:
        first_master = app.start()
        assert set(app.answers(6)) == {"1.0"}
        release(config, "greetlib==2.0\n")
        new, _ = ensure_environment(config, workspace)
        assert f"is live, was {old.key}" in switch_environment.fn(config)
        second_master = app.reload()
        assert second_master != first_master and set(app.answers(6)) == {"2.0"}
        # It runs through the link, so the next re-exec follows the link again.
        argv = Path(f"/proc/{second_master}/cmdline").read_bytes().split(b"\0")
        assert argv[0].decode() == str(config.service.python)
        assert os.path.realpath(f"/proc/{second_master}/exe") == os.path.realpath(new.python)
        release(config, "greetlib==1.0\n")  # the rollback: the previous code, and exactly its environment
        switch_environment.fn(config, old.key)
        app.reload()
        assert set(app.answers(6)) == {"1.0"}
    finally:
        app.kill_everything()
