"""The operator's side of the story: `deployctl init` on a checkout of the app, the files it wrote
filled in as a person would (the TODOs, the guesses init could not get right, the per-release
environments), and each environment brought up at r1 before its first deploy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from deployments.config import EnvironmentConfig, load_environment_file
from tasks.app_commands import expand_argv
from tasks.app_process import stop as stop_app
from tests.other_app.repository import clone

DEPLOYCTL = str(Path(sys.executable).with_name("deployctl"))
# The interpreter each release's environment is made from, and the packages every service on this
# machine shares (the orchestrator's own environment holds fastapi, sqlalchemy, alembic, psycopg,
# pydantic-settings, gunicorn and uvicorn-worker): tests have no network to install them from.
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
SHARED_SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
HEALTH = "/api/v1/utils/health-check/"

INSTALL = """\
# No network on these hosts: the installer links the packages the host shares and installs the rest
# (greetlib) from the team's wheelhouse.
install_command = ["{{python}}", "scripts/install_dependencies.py"]
env = {{ SHARED_SITE_PACKAGES = "{shared}", PIP_NO_INDEX = "1", PIP_FIND_LINKS = "{wheelhouse}" }}"""

WATCH = """
[watch]
# No metrics: the watch samples health only. Short, so the story sees it end.
duration_seconds = 10
interval_seconds = 3
"""

# The app's own admin login: its password lives in app.env, like the database's.
ADMIN_PASSWORD = "Inventory-admin-7c3e9f41"
ADMIN_SECRET = """
[service.secrets]
FIRST_SUPERUSER_PASSWORD = { env = "INVENTORY_ADMIN_PASSWORD" }
"""

# Production's smoke test, as a team writes it for a token-authenticated API: an OAuth2 password
# login (a form post, which writes nothing, so `check` may run it), then the token on the endpoints.
CRITICAL_PATHS = """
[[critical_paths]]
name = "login"
method = "POST"
path = "/api/v1/login/access-token"
form = { username = "admin@example.com", password = "{{ secrets.password }}" }
secrets = { password = { env = "INVENTORY_ADMIN_PASSWORD" } }
expect = [{ at = "token_type", equals = "bearer" }]
read_only = true

[[critical_paths]]
name = "list-items"
path = "/api/v1/items/"
headers = { Authorization = "Bearer {{ login.access_token }}" }
budget_seconds = 5

[[critical_paths]]
name = "create-item"
method = "POST"
path = "/api/v1/items/"
headers = { Authorization = "Bearer {{ login.access_token }}" }
json = { title = "release check" }
expect_status = 201
expect = [{ at = "title", equals = "release check" }]

[[critical_paths]]
name = "delete-item"
method = "DELETE"
path = "/api/v1/items/{{ create-item.id }}"
headers = { Authorization = "Bearer {{ login.access_token }}" }
expect = [{ at = "message", contains = "deleted" }]
"""

# The release's own tests, on a database made for them and migrated to the release's head.
RELEASE_TESTS = """[prerequisites]
test_command = ["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
test_database = true
secrets = { FIRST_SUPERUSER_PASSWORD = { env = "INVENTORY_ADMIN_PASSWORD" } }
"""


def deployctl(*args: str, env: Mapping[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEPLOYCTL, *args], env=dict(env or os.environ), capture_output=True, text=True,
                          timeout=timeout)


def init(checkout: Path, directory: Path) -> dict[str, str]:
    """`deployctl init` as the README says; what it wrote, by file name."""
    result = deployctl("init", str(checkout), "--dir", str(directory))
    assert result.returncode == 0, result.stdout + result.stderr
    return {path.name: path.read_text() for path in sorted(directory.iterdir()) if path.is_file()}


def edit(text: str, old: str | re.Pattern[str], new: str) -> str:
    """`text` with `old` replaced everywhere; init must have written it."""
    edited = old.sub(lambda _: new, text) if isinstance(old, re.Pattern) else text.replace(old, new)
    assert edited != text, f"init wrote no {old!r} to replace"
    return edited


def fill_in(text: str, host: Path, port: int, wheelhouse: Path) -> str:
    """One environment file as its operator finishes it: the workspace and the releases' environments
    on the host, a port of its own, and the install as these hosts do it. (The origin and the health
    route under the API prefix are init's own findings.)"""
    guessed_port = re.search(r'base_url = "http://127\.0\.0\.1:(\d+)"', text)
    assert guessed_port, text
    text = edit(text, re.compile(r"^workspace = .*$", re.M), f'workspace = "{host / "app"}"')
    text = edit(text, f"127.0.0.1:{guessed_port[1]}", f"127.0.0.1:{port}")  # base_url and --bind
    text = edit(text, re.compile(r"^directory = \"/srv/.*$", re.M), f'directory = "{host / "envs"}"')
    # Tests wait less than a team would: a second of startup grace, health held over two checks.
    text = edit(text, 'reload = "usr2"', 'grace_seconds = 1\nreload = "usr2"')
    text = edit(text, "required_services = []", "required_services = []\nstable_checks = 2\nstable_seconds = 1")
    text = edit(text, re.compile(r"^python = .*$", re.M), f'python = "{BASE_PYTHON}"')
    text = edit(text, re.compile(r"^files = .*$", re.M),
                'files = ["requirements.txt", "scripts/install_dependencies.py"]')
    text = edit(text, re.compile(r"^install_command = .*$", re.M),
                INSTALL.format(shared=SHARED_SITE_PACKAGES, wheelhouse=wheelhouse))
    return text + WATCH + ADMIN_SECRET


def with_critical_paths(text: str) -> str:
    """The items API, which production's users depend on, checked after every deploy and rollback, and
    the release's own tests before it."""
    return edit(text, "[prerequisites]\n", RELEASE_TESTS) + CRITICAL_PATHS


def fill_in_urls(text: str, urls: Mapping[str, str]) -> str:
    """app.env with each environment's database URL where init left an example."""
    for variable, url in urls.items():
        text = edit(text, re.compile(rf"^# {variable}=.*$", re.M), f"{variable}={url}")
    return text + f"INVENTORY_ADMIN_PASSWORD={ADMIN_PASSWORD}\n"


def bring_up(config: EnvironmentConfig, origin: Path, tag: str, variables: Mapping[str, str],
             env: Mapping[str, str]) -> int:
    """An environment as its operator brings it up before the first deploy: the workspace cloned at
    `tag`, the release's environment built and made live (`deployctl dependencies`), the database
    migrated, the app started with the file's own start command. `variables` are what the app reads
    (the database's five); `env` is the operator's shell. Returns the app's pid."""
    clone(origin, config.source.workspace, tag)
    built = deployctl("dependencies", config.name, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    python = str(config.service.python)
    app_env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/"),
               **config.service.env, **variables}
    migrated = subprocess.run([python, "-m", "alembic", "upgrade", "head"], cwd=config.app_dir(), env=app_env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    argv = expand_argv(config.service.start_command, config)
    config.service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    config.service.startup_log.parent.mkdir(parents=True, exist_ok=True)
    with open(config.service.startup_log, "ab") as log:
        subprocess.Popen(argv, cwd=config.app_dir(), env=app_env, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(config.service.base_url + config.health.path, timeout=2).status_code == 200:
                return int(config.service.pid_file.read_text())
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{config.name} did not come up: {config.service.startup_log.read_text()[-3000:]}")


def stop(config: EnvironmentConfig) -> None:
    """The app's master, by its pid file; its workers end with it (the tool's own stop)."""
    stop_app(config, timeout=20)


def load(directory: Path, name: str) -> EnvironmentConfig:
    return load_environment_file(directory / f"{name}.toml")
