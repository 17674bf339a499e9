"""The environment file's commands as argv: `{python}`, `{bin}` (its directory), `{workspace}` and
`{app}` (the app's directory in it, `source.app_directory`) are the only placeholders. With
[dependencies], `{python}` and `{bin}` are the release's own environment's (tasks/release_environments). An app command
runs in the app's directory with a clean environment: the app gets
PATH, HOME, locale and its own variables, never the orchestrator's (which may hold API keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from deployments.config import EnvironmentConfig
from tasks.processes import Command, child_env
from tasks.release_environments import interpreter


def expand_argv(argv: Sequence[str], config: EnvironmentConfig, workspace: Path | None = None,
                python: Path | None = None) -> list[str]:
    """`argv` with the placeholders filled in; `workspace` stands in for a scratch tree of the release,
    whose own environment then gives `{python}` and `{bin}` (with [dependencies]), unless `python` does."""
    python = python or interpreter(config, workspace)
    values = {"python": str(python), "bin": str(python.parent),
              "workspace": str(workspace or config.source.workspace), "app": str(config.app_dir(workspace))}
    return [part.format_map(values) if "{" in part else part for part in argv]


def app_command(config: EnvironmentConfig, argv: Sequence[str], app_env: Mapping[str, str],
                timeout: float = 60.0) -> Command:
    """One of the app's commands (start, reload, preflight, maintenance), run in the app's directory."""
    return Command.of(expand_argv(argv, config), cwd=config.app_dir(), env=child_env(app_env), timeout=timeout)
