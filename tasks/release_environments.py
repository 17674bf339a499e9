"""Where each release's Python environment is, and which one a command of a release runs in.

With [dependencies] every release has an environment of its own (tasks/dependencies.py builds them):

    <directory>/<key>/                           a venv with the release's dependencies installed
    <directory>/<key>/.release-environment.json  written last: the environment is whole
    <directory>/current                          a link to the live release's environment

The key is a hash of the dependency files' contents (in the release's app directory), the install
and check commands, their variables and the base interpreter: a release that changes none of them
shares its predecessor's environment. A command of a release checked out in a scratch tree runs in
that release's environment; a command in the workspace runs in `current`, which `service.python`
names. Without [dependencies] both are `service.python`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployments.config import EnvironmentConfig
from deployments.errors import PreflightError

MARKER = ".release-environment.json"
CURRENT = "current"


@dataclass(frozen=True)
class ReleaseEnvironment:
    key: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def complete(self) -> bool:
        return (self.path / MARKER).is_file()

    def facts(self) -> dict[str, Any]:
        """What its marker says: the files that keyed it, when it was built, how long that took."""
        try:
            return json.loads((self.path / MARKER).read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}


def dependency_files(config: EnvironmentConfig, app_dir: Path) -> dict[str, bytes]:
    """The contents of the release's dependency files; one that is missing fails the install step."""
    assert config.dependencies is not None
    found: dict[str, bytes] = {}
    for name in config.dependencies.files:
        try:
            found[name] = (app_dir / name).read_bytes()
        except OSError:
            raise PreflightError("install dependencies", f"the release has no {name} in its app directory "
                                 f"({config.source.app_directory})", "add it to the release, or list the release's "
                                 "dependency files in dependencies.files; nothing was changed") from None
    return found


def environment_key(config: EnvironmentConfig, app_dir: Path) -> str:
    dependencies = config.dependencies
    assert dependencies is not None
    digest = hashlib.sha256()
    recipe = {"python": str(dependencies.python), "venv": dependencies.venv_options, "install": dependencies.install_command,
              "check": dependencies.check_command, "env": sorted(dependencies.env.items())}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for name, content in sorted(dependency_files(config, app_dir).items()):
        digest.update(f"\0{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def environment_of(config: EnvironmentConfig, key: str) -> ReleaseEnvironment:
    assert config.dependencies is not None
    return ReleaseEnvironment(key, config.dependencies.directory / key)


def release_environment(config: EnvironmentConfig, app_dir: Path) -> ReleaseEnvironment:
    """The environment of the release whose app directory is `app_dir` (built or not)."""
    return environment_of(config, environment_key(config, app_dir))


def live_environment(config: EnvironmentConfig) -> ReleaseEnvironment | None:
    """The environment `current` links, or None (no [dependencies], or none made live yet)."""
    if config.dependencies is None:
        return None
    try:
        target = os.readlink(config.dependencies.directory / CURRENT)
    except OSError:
        return None
    return environment_of(config, Path(target).name)


def interpreter(config: EnvironmentConfig, tree: Path | None = None) -> Path:
    """The interpreter a command of the release checked out in `tree` runs with: that release's own
    environment for a scratch tree, the live one (`service.python`) for the workspace."""
    if config.dependencies is None or tree is None or tree == config.source.workspace:
        return config.service.python
    environment = release_environment(config, config.app_dir(tree))
    if not environment.complete:
        raise PreflightError("release environment", f"the release's environment {environment.key} is not built",
                             "its install-dependencies step builds it; run the deploy again")
    return environment.python
