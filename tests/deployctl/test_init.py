"""`deployctl init`: a repository read, never run, into environment files that load as they are."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deployctl.cli import main as deployctl
from deployctl.init import inspect_repository, write_environment_files
from deployments.config import load_environment_file
from deployments.errors import InvalidInput

PROJECT = Path(__file__).resolve().parents[2]

# The shape of a well-known FastAPI + SQLModel template: the backend in a subdirectory, settings from
# five variables, the health route on a prefixed router, no metrics.
SETTINGS = '''from pydantic_settings import BaseSettings


class Settings(BaseSettings):
    API_V1_STR: str = "/api/v1"
    SECRET_KEY: str = "changethis"
    POSTGRES_SERVER: str
    POSTGRES_PORT: int = 5432
    POSTGRES_USER: str
    POSTGRES_PASSWORD: str = ""
    POSTGRES_DB: str = ""

    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        return f"postgresql+psycopg://{self.POSTGRES_USER}:{self.POSTGRES_PASSWORD}@{self.POSTGRES_SERVER}"
'''
FILES = {
    "frontend/package.json": "{}\n",
    "backend/alembic.ini": "[alembic]\nscript_location = app/alembic\n",
    "backend/app/alembic/env.py": "from app.core.config import settings\nurl = settings.SQLALCHEMY_DATABASE_URI\n",
    "backend/app/alembic/versions/e2412789c190_initialize.py": '"""Initialize."""\nrevision = "e2412789c190"\n',
    "backend/app/core/config.py": SETTINGS,
    "backend/app/main.py": ("from fastapi import FastAPI\n\nfrom app.api.main import api_router\n"
                            "from app.core.config import settings\n\napp = FastAPI(title='template')\n"
                            "app.include_router(api_router, prefix=settings.API_V1_STR)\n"),
    "backend/app/api/routes/utils.py": ("from fastapi import APIRouter\n\nrouter = APIRouter(prefix=\"/utils\", "
                                        "tags=[\"utils\"])\n\n\n@router.get(\"/health-check/\")\n"
                                        "async def health_check() -> bool:\n    return True\n"),
    "backend/pyproject.toml": "[project]\nname = 'app'\n",
    "backend/uv.lock": "version = 1\n",
}


def repository(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "--quiet", str(root)], check=True)
    return root


def test_a_monorepo_app_of_five_database_variables_is_read_as_such(tmp_path: Path) -> None:
    found = inspect_repository(repository(tmp_path / "template", FILES))
    assert found.app_directory == "backend"
    assert found.database_variables == {"POSTGRES_DB": "name", "POSTGRES_PASSWORD": "password", "POSTGRES_PORT": "port",
                                        "POSTGRES_SERVER": "host", "POSTGRES_USER": "user"}
    assert found.app_module == "app.main:app" and found.asgi
    assert found.health_paths == ["/api/v1/utils/health-check/"]  # the routers are mounted under API_V1_STR
    assert found.metrics is False and found.dependency_files == ["uv.lock", "pyproject.toml"]


def test_the_files_written_load_as_they_are_and_say_what_was_found(tmp_path: Path) -> None:
    repo = repository(tmp_path / "template", FILES)
    staging_file, production_file, secrets = write_environment_files(repo, tmp_path / "environments")
    assert "# PRODUCTION_DATABASE_URL=postgresql://" in secrets.read_text() and secrets.stat().st_mode & 0o077 == 0
    staging, production = load_environment_file(staging_file), load_environment_file(production_file)
    assert production.source.app_directory == "backend" and production.source.repository == str(repo)
    assert production.database.variables == {"POSTGRES_DB": "name", "POSTGRES_PASSWORD": "password",
                                             "POSTGRES_PORT": "port", "POSTGRES_SERVER": "host", "POSTGRES_USER": "user"}
    assert production.service.start_command[-1] == "app.main:app"
    assert "uvicorn_worker.UvicornWorker" in production.service.start_command
    # uv.lock: each release's environment is built by uv from it, and the app runs in the live one.
    assert production.dependencies is not None and production.dependencies.files == ["uv.lock", "pyproject.toml"]
    assert production.dependencies.install_command[:2] == ["uv", "sync"]
    assert production.service.start_command[:2] == ["{python}", "{bin}/gunicorn"]
    assert production.service.python == production.dependencies.directory / "current" / "bin" / "python"
    assert str(production.service.pid_file) in production.service.start_command  # the same file, both sides
    assert production.health.path == "/api/v1/utils/health-check/" and not production.health.check_version
    assert production.monitoring.source == "none"
    assert production.approvals.required_roles and production.prerequisites.staging_environment == "staging"
    assert not staging.approvals.required_roles and staging.service.base_url != production.service.base_url
    text = production_file.read_text()
    assert "# GUESS" in text and "# TODO" in text and "uv.lock" in text
    # The server runs from the release's own environment: what the files do not declare, it will not have.
    assert "# TODO: add gunicorn and uvicorn-worker to uv.lock" in text


def test_jobapp_is_read_as_it_is_deployed(tmp_path: Path) -> None:
    repo = tmp_path / "jobapp"
    shutil.copytree(PROJECT / "sample_app" / "jobapp", repo, ignore=shutil.ignore_patterns("__pycache__", "var"))
    subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    found = inspect_repository(repo)
    assert found.app_directory == "."
    assert found.database_variables == {"JOBAPP_DATABASE_URL": "url"}
    assert found.app_module == "jobapp.app:app" and found.metrics is True
    assert found.health_paths[:2] == ["/health", "/api/health"]
    config = load_environment_file(write_environment_files(repo, tmp_path / "env", ("production",))[0])
    assert config.database.variables == {"JOBAPP_DATABASE_URL": "url"} and config.monitoring.source == "app"
    assert config.health.api_path == "/api/health"


def test_nothing_is_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = repository(tmp_path / "template", FILES)
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "production.toml").write_text("# mine\n")
    assert deployctl(["init", str(repo), "--dir", str(tmp_path / "environments")]) == 2
    assert "production.toml already exist(s)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "environments").iterdir()) == ["production.toml"]
    assert (tmp_path / "environments" / "production.toml").read_text() == "# mine\n"


def test_init_from_the_command_line_says_what_to_do_next(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = repository(tmp_path / "template", FILES)
    assert deployctl(["init", str(repo), "--dir", str(tmp_path / "envs"), "--env", "qa", "--env", "production"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'envs' / 'qa.toml'}" in out and "deployctl check qa" in out
    production = load_environment_file(tmp_path / "envs" / "production.toml")
    assert production.prerequisites.staging_environment is None and production.approvals.required_roles
    assert not load_environment_file(tmp_path / "envs" / "qa.toml").approvals.required_roles


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is not a git checkout"):
        inspect_repository(tmp_path)
