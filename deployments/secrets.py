"""Secret values: resolved from their sources when needed, and kept out of every log line.

Prefect masks Secret blocks in its UI only; a logged value prints in clear. So every value resolved
here is registered with `redact`, which masks registered values and `scheme://user:password@`
credentials; `deployments.logs` applies it to every log record.
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path
from typing import Mapping

import httpx
from dotenv.parser import parse_stream

from deployments.config import EnvironmentConfig, ValueSource
from deployments.errors import ConfigError

MASK = "********"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]+)@")
_known: set[str] = set()
_known_lock = threading.Lock()


def redact(text: str) -> str:
    """`text` with every registered secret value and URL password masked."""
    with _known_lock:
        values = sorted(_known, key=len, reverse=True)
    for value in values:
        text = text.replace(value, MASK)
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def register_secret(value: str) -> None:
    # Very short values would mask innocent text everywhere; no real credential is that short.
    if len(value) >= 4:
        with _known_lock:
            _known.add(value)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as python-dotenv reads a .env file (quotes, `export`, `#` comments), with no
    interpolation. The file is read here, not by dotenv, which would take a missing one for an empty one:
    a missing or unreadable file raises OSError. A line dotenv cannot parse, or a KEY without '=', is a
    ConfigError naming the line (dotenv itself would only warn and skip it)."""
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(path.read_text(encoding="utf-8"))):
        if binding.error or (binding.key is not None and binding.value is None):
            what = "cannot be read as KEY=VALUE" if binding.error else "has no '='"
            raise ConfigError(f"env file {path}", f"line {binding.original.line} {what}", "write KEY=VALUE on each line")
        if binding.key is not None and binding.value is not None:
            values[binding.key] = binding.value
    return values


def resolve(
    source: ValueSource,
    field: str,
    config: EnvironmentConfig,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The value of `source`, registered for redaction. `field` names it in errors."""
    step = f"secret {field} of environment {config.name}"
    if source.env is not None:
        environ = os.environ if environ is None else environ
        value = environ.get(source.env)
        if value is None:
            for env_file in config.env_files:
                if env_file.is_file():
                    value = read_env_file(env_file).get(source.env)
                if value is not None:
                    break
        if not value:
            where = ", ".join(str(p) for p in config.env_files) or "no env_files listed"
            raise ConfigError(
                step,
                f"environment variable {source.env} is not set (looked in the process environment and {where})",
                f"set {source.env} for the worker, add it to an env file, or use {{ secret = \"block-name\" }}",
            )
    else:
        value = _load_secret_block(str(source.secret), step)
    register_secret(value)
    return value


def _load_secret_block(name: str, step: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except httpx.HTTPError as exc:
        raise ConfigError(
            step,
            f"Prefect Secret block {name!r} cannot be read: the Prefect API did not answer ({type(exc).__name__}: {exc})",
            "check that the Prefect server is up and PREFECT_API_URL points at it, then run again",
        ) from None
    except ValueError as exc:
        raise ConfigError(
            step,
            f"Prefect Secret block {name!r} does not exist ({exc})",
            f"create it: Secret(value=...).save({name!r}) or in the UI under Blocks",
        ) from None
    if not isinstance(value, str) or not value:
        raise ConfigError(step, f"Prefect Secret block {name!r} is empty or not text", "store the value as a string")
    return value


def resolve_database_url(config: EnvironmentConfig, environ: Mapping[str, str] | None = None) -> str:
    """The live database's URL, as the tool uses it (backups, revisions, the copy it makes)."""
    return resolve(config.database.url, "database.url", config, environ)


DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


def database_env(config: EnvironmentConfig, url: str) -> dict[str, str]:
    """The app's database variables ([database]) pointing at `url`: the live database, or a copy."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password:
        register_secret(parsed.password)  # given alone to the app, it must be masked alone too
    parts = {
        "url": url,
        "host": parsed.host or "",
        "port": str(parsed.port or DEFAULT_PORTS.get(parsed.get_backend_name(), "")),
        "user": parsed.username or "",
        "password": parsed.password or "",
        "name": parsed.database or "",
    }
    return {variable: parts[part] for variable, part in config.database.variables.items()}


def resolve_app_environment(config: EnvironmentConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every variable the app is given: its plain `env`, its secrets and its database variables. Secrets
    are resolved where they are used, never kept: a value rotated while a deploy waited for its approval
    is the one the release starts with."""
    resolved = dict(config.service.env)
    for variable, source in config.service.secrets.items():
        resolved[variable] = resolve(source, f"service.secrets.{variable}", config, environ)
    resolved.update(database_env(config, resolve_database_url(config, environ)))
    missing = [name for name in config.service.required_env if name not in resolved]
    if missing:
        raise ConfigError(
            f"verify environment configuration of {config.name}",
            f"required variable(s) {', '.join(missing)} are not configured",
            "add them to [service.env] or [service.secrets] in the environment file",
        )
    return resolved
