"""`deployctl init [REPO]`: a first staging and production file for an app this tool has never seen.

It reads the repository, never runs it: where `alembic.ini` is (the app's directory), what its
migrations read to reach the database (one URL, or parts: host, port, user, password, name), the
ASGI or WSGI application object, the dependency files, a health route, whether the app publishes
Prometheus metrics. What it finds is written as settings; what it could only guess is marked
`# GUESS:` on the line, and what it could not find is a `# TODO:`. The files load as they are
(`deployctl check ENV` then says what they reach); nothing existing is overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import git

from deployments.config import REMOTE_URL
from deployments.errors import InvalidInput

SKIPPED = {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache", "build", "dist", "site-packages"}
DEPENDENCY_FILES = ("uv.lock", "poetry.lock", "requirements.txt", "requirements.lock", "Pipfile.lock", "pyproject.toml")
# The names apps commonly give the parts of their database connection, by part.
PART_NAMES = {
    "host": re.compile(r"(DB|DATABASE|POSTGRES|PG|MYSQL)_?(HOST|SERVER)$"),
    "port": re.compile(r"(DB|DATABASE|POSTGRES|PG|MYSQL)_?PORT$"),
    "user": re.compile(r"(DB|DATABASE|POSTGRES|PG|MYSQL)_?USER(NAME)?$"),
    "password": re.compile(r"(DB|DATABASE|POSTGRES|PG|MYSQL)_?(PASSWORD|PASS)$"),
    "name": re.compile(r"(DB|DATABASE|POSTGRES|PG|MYSQL)_?(NAME|DB|DATABASE)$|^PGDATABASE$"),
    "url": re.compile(r"(DATABASE|DB|SQLALCHEMY_DATABASE)_?(URL|URI|DSN)$"),
}
_VARIABLE = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]\s*|getenv\(\s*)["']([A-Z][A-Z0-9_]*)["']""")
_SETTINGS_FIELD = re.compile(r"^\s+([A-Z][A-Z0-9_]*)\s*:\s*\w", re.M)
_FRAMEWORK = re.compile(r"\b(FastAPI|Starlette|Flask|Quart|Litestar|Sanic)\(")
# The module-level object a server is pointed at: `app = FastAPI(...)`, `app = create_app()`.
_MODULE_APP = re.compile(r"^(app|application|api)\s*(?::[^=\n]+)?=\s*[\w.]+\(", re.M)
_HEALTH_ROUTE = re.compile(r"""\.(?:get|route|api_route)\(\s*["']([^"']*health[^"']*)["']""", re.I)


@dataclass
class Findings:
    app_directory: str = "."
    alembic_config: str = "alembic.ini"
    database_variables: dict[str, str] = field(default_factory=dict)  # variable -> part
    app_module: str | None = None  # module:object
    asgi: bool = True
    dependency_files: list[str] = field(default_factory=list)
    health_paths: list[str] = field(default_factory=list)
    metrics: bool = False
    notes: list[str] = field(default_factory=list)


def inspect_repository(repo: Path) -> Findings:
    """What the repository says about the app, without running any of it."""
    if not (repo / ".git").exists():
        raise InvalidInput("init", f"{repo} is not a git checkout", "pass the directory of your app's repository")
    found = Findings()
    inis = sorted(_files(repo, "alembic.ini"), key=lambda p: len(p.parts))
    if not inis:
        found.notes.append("no alembic.ini found: this tool deploys apps whose database is migrated by Alembic")
        app_dir = repo
    else:
        app_dir = inis[0].parent
        if len(inis) > 1:
            found.notes.append("several alembic.ini: took " + ", ".join(str(p.relative_to(repo)) for p in inis[:1]))
    found.app_directory = app_dir.relative_to(repo).as_posix() if app_dir != repo else "."
    found.database_variables = _database_variables(app_dir)
    sources = [p for p in _files(app_dir, "*.py") if "migrations" not in p.parts and "alembic" not in p.parts]
    mounted = _router_prefix(sources)
    for path in sources:
        text = _read(path)
        framework = _FRAMEWORK.search(text)
        if framework and found.app_module is None:
            module = ".".join(path.relative_to(app_dir).with_suffix("").parts).removesuffix(".__init__")
            variable = _MODULE_APP.search(text)
            found.app_module = f"{module}:{variable.group(1) if variable else 'app'}"
            found.asgi = framework.group(1) != "Flask"
        routes = [_with_prefix(route, text) for route in _HEALTH_ROUTE.findall(text)]
        found.health_paths += [(mounted + route if "APIRouter(" in text else route) for route in routes]
        if "prometheus_client" in text or "prometheus_fastapi_instrumentator" in text:
            found.metrics = True
    found.dependency_files = [name for name in DEPENDENCY_FILES if (app_dir / name).is_file()]
    return found


def environment_file(findings: Findings, name: str, repo: Path, port: int, staging: str | None,
                     directory: Path) -> str:
    """One environment's file from the findings, every guess marked. `directory` is where it is written:
    the pid file is named by absolute path, the same in the file and in the start command."""
    upper = re.sub(r"[^A-Z0-9]", "_", name.upper())
    f = findings
    pid_file = directory.resolve() / "run" / name / "app.pid"
    installs = _install(f.dependency_files)
    # With an environment per release, gunicorn is started by the environment's interpreter: its USR2
    # re-exec then follows the `current` link to the new release's packages.
    gunicorn = ["{python}", "{bin}/gunicorn"] if installs else ["{bin}/gunicorn"]
    start = ([*gunicorn, "-k", "uvicorn_worker.UvicornWorker"] if f.asgi else gunicorn)
    start += ["--bind", f"127.0.0.1:{port}", "--pid", str(pid_file), f.app_module or "TODO:module:app"]
    lines = [
        f"# The {name} environment of the app in {repo}, as `deployctl init` read the repository.",
        "# Lines marked GUESS are what init inferred: check each. TODO lines need you. Then: deployctl check " + name,
        f'name = "{name}"',
        'env_files = ["app.env"]  # KEY=VALUE files the { env = ... } sources below are read from',
        f'state_dir = "state/{name}"',
        "",
        "[source]",
        *_repository_lines(repo),
        'branch = "main"  # GUESS: releases must be merged to this branch',
        f'workspace = "/srv/{name}/app"  # TODO: the checkout {name} serves, deployed in place',
        f'app_directory = "{f.app_directory}"' + ("" if f.app_directory == "." else "  # where alembic.ini is"),
        "",
        "[service]",
        f'base_url = "http://127.0.0.1:{port}"  # GUESS',
        *([] if installs else ['python = "/srv/venv/bin/python"  # TODO: the interpreter of the environment the app runs in']),
        "start_command = " + _toml_list(start) + ("  # GUESS" if f.app_module else "  # TODO: your app object"),
        'reload = "usr2"  # gunicorn: a new master takes over, then the old one retires',
        f'pid_file = "{pid_file}"',
        f'startup_log = "logs/{name}/app.log"  # the app\'s output is appended here',
    ]
    if f.app_module:
        module = f.app_module.split(":")[0]
        lines.append(f'preflight_command = ["{{python}}", "-c", "import {module}"]  # GUESS: the release must import')
    lines += ["", "[service.env]", f'APP_ENV = "{name}"  # GUESS: the variables your app reads besides the database']
    lines += ["", "[database]", f'url = {{ env = "{upper}_DATABASE_URL" }}  # the URL itself goes in app.env, never here']
    parts = f.database_variables
    if parts and set(parts.values()) != {"url"}:
        lines += [f'alembic_config = "{f.alembic_config}"', "", "[database.app_variables]",
                  "# The app builds its connection from these; the tool sets each from the URL (the live database,",
                  "# or the copy a migration rehearsal runs on). Never set them in [service.env] too."]
        lines += [f'{variable} = "{part}"  # GUESS' for variable, part in sorted(parts.items())]
    else:
        variable = next(iter(parts), "DATABASE_URL")
        lines.append(f'app_variable = "{variable}"' + ("  # GUESS" if parts else "  # TODO: the variable your app reads"))
        lines.append(f'alembic_config = "{f.alembic_config}"')
    health = f.health_paths[0] if f.health_paths else "/health"
    api_health = next((path for path in f.health_paths if "api" in path), health)
    lines += ["", "[backups]", f'directory = "backups/{name}"', "keep = 10", "", "[health]",
              f'path = "{health}"' + ("  # GUESS" if f.health_paths else "  # TODO: your health route"),
              f'api_path = "{api_health}"' + ("  # GUESS: the answer with per-service detail" if f.health_paths else ""),
              "check_version = false  # GUESS: true once the health answer carries the SHA it serves as `version`",
              "required_services = []", "", "[monitoring]",
              f'source = "{"app" if f.metrics else "none"}"' + ("  # GUESS: the app's /metrics" if f.metrics else
                                                              "  # no Prometheus metrics found: not measured")]
    if "prod" in name:
        lines += ["", "[approvals]", 'required_roles = ["team-lead", "product-owner"]  # two people, as the runbook says']
        if staging and staging != name:
            lines += ["", "[prerequisites]", f'staging_environment = "{staging}"  # must serve the same SHA first']
    if installs:
        files, command = installs
        lines += ["", "[dependencies]",
                  "# Each release gets its own environment, built from these files before anything runs it, and",
                  "# made live with its code; a rollback returns to the previous one. The app runs in",
                  "# <directory>/current/bin/python (so service.python is left out).",
                  f'directory = "/srv/{name}/envs"  # TODO: one directory per environment, beside the workspace',
                  'python = "/usr/bin/python3"  # TODO: the interpreter environments are created from',
                  f"files = {_toml_list(files)}  # found in the app's directory",
                  f"install_command = {_toml_list(command)}  # GUESS: runs in the release's app directory"]
        declared = " ".join(_read(repo / f.app_directory / name) for name in files).lower().replace("_", "-")
        missing = [name for name in (["gunicorn"] + (["uvicorn-worker"] if f.asgi else [])) if name not in declared]
        if missing:
            lines.append(f"# TODO: add {' and '.join(missing)} to {files[0]}: the start command runs gunicorn from "
                         "the release's own environment, which holds only what its files declare")
        if command[0] != "{python}":
            lines += ['check_command = []  # GUESS: the installer above checks what it resolves',
                      'venv_options = ["--without-pip"]  # the installer brings its own']
    elif f.dependency_files:
        lines += ["", f"# Dependencies: {', '.join(f.dependency_files)} found; install them into service.python's "
                  "environment before a release that changes them, or add a [dependencies] section."]
    lines += [f"# Note: {note}" for note in f.notes]
    return "\n".join(lines) + "\n"


def _install(found: list[str]) -> tuple[list[str], list[str]] | None:
    """The dependency files that key a release's environment and the command that installs them."""
    if "uv.lock" in found:
        return ["uv.lock", "pyproject.toml"], ["uv", "sync", "--frozen", "--no-dev", "--active"]
    if "poetry.lock" in found:
        return ["poetry.lock", "pyproject.toml"], ["poetry", "install", "--only", "main", "--no-root"]
    for name in ("requirements.lock", "requirements.txt"):
        if name in found:
            return [name], ["{python}", "-m", "pip", "install", "-r", name]
    if "pyproject.toml" in found:
        return ["pyproject.toml"], ["{python}", "-m", "pip", "install", "."]
    return None


def write_environment_files(repo: Path, directory: Path, names: tuple[str, ...] = ("staging", "production"),
                            first_port: int = 8100) -> list[Path]:
    """The files, written only if none of them exists yet."""
    repo = repo.resolve()
    findings = inspect_repository(repo)
    targets = [directory / f"{name}.toml" for name in names]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise InvalidInput("init", f"{', '.join(existing)} already exist(s)",
                           "move them away or pass --dir for another directory; nothing was written")
    directory.mkdir(parents=True, exist_ok=True)
    staging = "staging" if "staging" in names else None
    for index, (name, path) in enumerate(zip(names, targets)):
        path.write_text(environment_file(findings, name, repo, first_port + index, staging, directory))
    secrets = directory / "app.env"
    if not secrets.exists():  # where the { env = ... } sources are read from; values are never in the files
        variables = [f"{re.sub(r'[^A-Z0-9]', '_', name.upper())}_DATABASE_URL" for name in names]
        secrets.write_text("# KEY=VALUE, read by the environment files' { env = ... } sources. Keep it out of git.\n"
                           + "".join(f"# {v}=postgresql://USER:PASSWORD@HOST:5432/NAME\n" for v in variables))
        secrets.chmod(0o600)
        targets.append(secrets)
    return targets


def _database_variables(app_dir: Path) -> dict[str, str]:
    """The variables the migrations (env.py) and the app's settings read, that name a database part."""
    names: set[str] = set()
    for path in [*_files(app_dir, "env.py"), *_files(app_dir, "config.py"), *_files(app_dir, "settings.py")]:
        text = _read(path)
        names.update(_VARIABLE.findall(text))
        if "BaseSettings" in text:
            names.update(_SETTINGS_FIELD.findall(text))
    parts = {}
    for variable in sorted(names):
        part = next((part for part, pattern in PART_NAMES.items() if pattern.search(variable)), None)
        if part is not None and part not in parts.values():
            parts[variable] = part
    if "url" in parts.values() and len(parts) > 1:  # the app reads a URL: that one is enough
        return {variable: part for variable, part in parts.items() if part == "url"}
    if parts and not {"name", "url"} & set(parts.values()):
        return {}  # parts without the database's name cannot be pointed at a copy: ask instead
    return parts


_MOUNT = re.compile(r"""\.include_router\(\s*[\w.]+\s*,\s*prefix\s*=\s*(?:["']([^"']+)["']|(?:[\w]+\.)?([A-Z][A-Z0-9_]*))""")


def _repository_lines(repo: Path) -> list[str]:
    """Where releases are fetched from: the checkout's `origin`, which is what a team pushes to, else
    the checkout itself."""
    try:
        origin = git.Repo(repo).remotes.origin.url
    except (AttributeError, IndexError, ValueError, git.GitError):
        return [f'repository = "{repo}"  # TODO: the repository releases are fetched from (no origin found)']
    if not REMOTE_URL.match(origin) and not Path(origin).is_absolute():
        origin = str((repo / origin).resolve())  # a path relative to the checkout
    return [f'repository = "{origin}"  # GUESS: the checkout\'s origin; credentials come from git\'s own setup']


def _router_prefix(sources: list[Path]) -> str:
    """The prefix the app mounts its routers under (`app.include_router(api_router, prefix=settings.API_V1_STR)`),
    when there is one; a setting it names is looked up where it is given a literal default."""
    prefixes = set()
    texts = [_read(path) for path in sources]
    for text in texts:
        for literal, setting in _MOUNT.findall(text):
            if literal:
                prefixes.add(literal)
                continue
            pattern = re.compile(rf"""^\s*{setting}\s*(?::\s*\w+)?\s*=\s*["']([^"']+)["']""", re.M)
            prefixes.update(match.group(1) for t in texts for match in [pattern.search(t)] if match)
    return prefixes.pop().rstrip("/") if len(prefixes) == 1 else ""


def _with_prefix(route: str, text: str) -> str:
    """A route of a router mounted under a prefix keeps it when the file says so (`APIRouter(prefix=...)`)."""
    prefix = re.search(r"""APIRouter\([^)]*prefix\s*=\s*["']([^"']+)["']""", text)
    return (prefix.group(1).rstrip("/") if prefix else "") + route


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file() and not SKIPPED & set(p.relative_to(root).parts))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items) + "]"

