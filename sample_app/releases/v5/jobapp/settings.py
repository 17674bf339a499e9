"""Runtime settings, read from the environment when the app or a command starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Environment = Literal["development", "staging", "production"]
ENVIRONMENTS: tuple[Environment, ...] = ("development", "staging", "production")
DEFAULT_DATABASE_URL = "sqlite:///./var/jobapp.db"
DEFAULT_DATA_DIR = "./var"
DEFAULT_MATCH_CACHE_SIZE = 500


class SettingsError(ValueError):
    """An environment variable holds a value jobapp cannot use."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    environment: Environment
    data_dir: Path
    # Set by gunicorn.conf.py; None means metrics live in this process only.
    metrics_dir: Path | None = None
    match_cache_size: int = DEFAULT_MATCH_CACHE_SIZE

    @property
    def documents_dir(self) -> Path:
        return self.data_dir / "documents"

    @property
    def maintenance_file(self) -> Path:
        return self.data_dir / "maintenance"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        environment = env.get("JOBAPP_ENV", "development")
        if environment not in ENVIRONMENTS:
            raise SettingsError(
                f"JOBAPP_ENV={environment!r} is not one of {', '.join(ENVIRONMENTS)}; set it to one of them"
            )
        metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR")
        cache_size = env.get("JOBAPP_MATCH_CACHE_SIZE") or str(DEFAULT_MATCH_CACHE_SIZE)
        if not cache_size.isdigit() or int(cache_size) < 1:
            raise SettingsError(
                f"JOBAPP_MATCH_CACHE_SIZE={cache_size!r} must be a whole number of entries, 1 or more"
            )
        return cls(
            database_url=env.get("JOBAPP_DATABASE_URL") or DEFAULT_DATABASE_URL,
            environment=environment,
            # Resolved now so a later chdir cannot move the data.
            data_dir=Path(env.get("JOBAPP_DATA_DIR") or DEFAULT_DATA_DIR).resolve(),
            metrics_dir=Path(metrics_dir) if metrics_dir else None,
            match_cache_size=int(cache_size),
        )
