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


class SettingsError(ValueError):
    """An environment variable holds a value jobapp cannot use."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    environment: Environment
    data_dir: Path
    # Set by gunicorn.conf.py; None means metrics live in this process only.
    metrics_dir: Path | None = None

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
        return cls(
            database_url=env.get("JOBAPP_DATABASE_URL") or DEFAULT_DATABASE_URL,
            environment=environment,
            # Resolved now so a later chdir cannot move the data.
            data_dir=Path(env.get("JOBAPP_DATA_DIR") or DEFAULT_DATA_DIR).resolve(),
            metrics_dir=Path(metrics_dir) if metrics_dir else None,
        )
