"""Secret values (deployments/secrets.py): where `{ env = }` and `{ secret = }` sources are looked up, the
error that names a missing one and how to fix it, the redaction of every resolved value and of URL
credentials, and the env files a team writes by hand, parsed as a user expects a .env file to be.

Environments are the committed production file with its paths in tmp_path. A `{ secret = }` source is
read from Prefect's block store: a store that answers 404 is a small local HTTP server, and blocks
that exist are handed to `Secret.load` from a dict, since these tests start no Prefect server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.config import EnvironmentConfig, ValueSource, load_environment_file
from deployments.errors import ConfigError, DeployError
from deployments.secrets import MASK, read_env_file, redact, register_secret, resolve, resolve_app_environment
from tests.conftest import free_ports
from tests.tasks.release_history import environment_file

VARIABLE = "JOBAPP_PRODUCTION_DATABASE_URL"


def unique(prefix: str) -> str:
    """A value no other test registered: the registry of secrets lives as long as the process."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def no_inherited_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (VARIABLE, "JOBAPP_SMTP_PASSWORD_SOURCE", "JOBAPP_API_TOKEN_SOURCE"):
        monkeypatch.delenv(name, raising=False)


def environment(tmp_path: Path, edit: Callable[[str], str] = lambda text: text) -> EnvironmentConfig:
    path = environment_file(tmp_path)
    path.write_text(edit(path.read_text()))
    return load_environment_file(path)


def with_env_files(tmp_path: Path, *names: str) -> Callable[[str], str]:
    listed = ", ".join(f'"{tmp_path / name}"' for name in names)
    return lambda text: text.replace(f'env_files = ["{tmp_path}/sandbox.env"]', f"env_files = [{listed}]")


def database_url(config: EnvironmentConfig, environ: dict[str, str] | None = None) -> str:
    return resolve(config.database.url, "database.url", config, environ)


# --- { env = } ---------------------------------------------------------------------------------------------


def test_a_variable_of_the_given_environment_is_resolved_and_registered(tmp_path: Path) -> None:
    value = unique("postgresql://app:pw")
    assert database_url(environment(tmp_path), {VARIABLE: value}) == value
    assert redact(f"connecting to {value}") == f"connecting to {MASK}"


def test_the_process_environment_is_read_when_none_is_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = unique("sqlite:////srv/jobapp")
    monkeypatch.setenv(VARIABLE, value)
    assert database_url(environment(tmp_path)) == value


def test_the_process_environment_comes_before_the_env_files(tmp_path: Path) -> None:
    (tmp_path / "sandbox.env").write_text(f"{VARIABLE}=from-the-file\n")
    assert database_url(environment(tmp_path), {VARIABLE: "from-the-worker"}) == "from-the-worker"


def test_env_files_are_read_in_order_and_missing_ones_skipped(tmp_path: Path) -> None:
    (tmp_path / "first.env").write_text("OTHER=1\n")
    (tmp_path / "second.env").write_text(f"{VARIABLE}=from-the-second\n")
    (tmp_path / "third.env").write_text(f"{VARIABLE}=from-the-third\n")
    files = with_env_files(tmp_path, "absent.env", "first.env", "second.env", "third.env")
    config = environment(tmp_path, files)
    assert database_url(config, {}) == "from-the-second"


def test_a_missing_variable_names_the_step_the_places_looked_and_the_fix(tmp_path: Path) -> None:
    config = environment(tmp_path, with_env_files(tmp_path, "a.env", "b.env"))
    (tmp_path / "a.env").write_text("SOMETHING_ELSE=1\n")
    with pytest.raises(ConfigError) as caught:
        database_url(config, {})
    error = caught.value
    assert error.step == "secret database.url of environment production"
    assert error.cause == (f"environment variable {VARIABLE} is not set (looked in the process environment "
                           f"and {tmp_path / 'a.env'}, {tmp_path / 'b.env'})")
    assert error.action == (f"set {VARIABLE} for the worker, add it to an env file, "
                            'or use { secret = "block-name" }')
    assert str(error) == f"{error.step}: {error.cause}. {error.action}"


def test_a_missing_variable_without_env_files_says_so(tmp_path: Path) -> None:
    config = environment(tmp_path, lambda text: text.replace(f'env_files = ["{tmp_path}/sandbox.env"]\n', ""))
    with pytest.raises(ConfigError, match="looked in the process environment and no env_files listed"):
        database_url(config, {})


@pytest.mark.parametrize("where", ["process", "file"])
def test_an_empty_value_is_refused_like_a_missing_one(tmp_path: Path, where: str) -> None:
    (tmp_path / "sandbox.env").write_text(f"{VARIABLE}=\n" if where == "file" else "")
    with pytest.raises(ConfigError, match=f"environment variable {VARIABLE} is not set"):
        database_url(environment(tmp_path), {VARIABLE: ""} if where == "process" else {})


# --- { secret = } ------------------------------------------------------------------------------------------


@pytest.fixture
def secret_blocks(monkeypatch: pytest.MonkeyPatch) -> dict[str, Secret]:
    """Secret blocks by name, as the Prefect server would hand them to `Secret.load`."""
    store: dict[str, Secret] = {}

    def load(cls: type[Secret], name: str, *args: Any, **kwargs: Any) -> Secret:
        return store[name]

    monkeypatch.setattr(Secret, "load", classmethod(load))
    return store


def from_block(tmp_path: Path) -> EnvironmentConfig:
    return environment(tmp_path, lambda text: text.replace(f'url = {{ env = "{VARIABLE}" }}',
                                                           'url = { secret = "jobapp-production-db" }'))


def test_a_secret_block_is_read_and_its_value_registered(
        tmp_path: Path, secret_blocks: dict[str, Secret]) -> None:
    value = unique("postgresql://app:block-pw")
    secret_blocks["jobapp-production-db"] = Secret(value=value)
    assert database_url(from_block(tmp_path), {}) == value
    assert MASK in redact(value) and value not in redact(f"url={value}")


@pytest.mark.parametrize("stored", ["", {"url": "postgresql://app@db/app"}, ["a", "b"]],
                         ids=["an empty block", "a block holding JSON", "a block holding a list"])
def test_a_secret_block_that_is_not_text_is_refused(tmp_path: Path, secret_blocks: dict[str, Secret],
                                                   stored: Any) -> None:
    secret_blocks["jobapp-production-db"] = Secret(value=stored)
    with pytest.raises(ConfigError) as caught:
        database_url(from_block(tmp_path), {})
    assert caught.value.step == "secret database.url of environment production"
    assert caught.value.cause == "Prefect Secret block 'jobapp-production-db' is empty or not text"
    assert caught.value.action == "store the value as a string"


@contextmanager
def prefect_api_answering(status: int) -> Iterator[list[str]]:
    """A Prefect API on loopback that answers every request with `status`; yields the paths asked for."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            paths.append(self.path)
            body = b'{"detail": "Block document not found"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{server.server_port}/api"}):
            yield paths
    finally:
        server.shutdown()
        server.server_close()


def test_a_secret_block_that_does_not_exist_names_it_and_how_to_create_it(tmp_path: Path) -> None:
    config = from_block(tmp_path)
    with prefect_api_answering(404) as paths, pytest.raises(ConfigError) as caught:
        database_url(config, {})
    assert paths == ["/api/block_types/slug/secret/block_documents/name/jobapp-production-db"
                     "?include_secrets=true"]
    assert caught.value.step == "secret database.url of environment production"
    assert caught.value.cause.startswith("Prefect Secret block 'jobapp-production-db' does not exist (")
    assert caught.value.action == ("create it: Secret(value=...).save('jobapp-production-db') "
                                   "or in the UI under Blocks")


def test_a_secret_block_behind_an_unreachable_api_is_a_deploy_error_naming_the_secret(tmp_path: Path) -> None:
    config = from_block(tmp_path)
    (closed,) = free_ports(1)
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed}/api"}):
        with pytest.raises(DeployError) as caught:
            database_url(config, {})
    assert caught.value.step == "secret database.url of environment production"
    assert "jobapp-production-db" in caught.value.cause


# --- redact -----------------------------------------------------------------------------------------------


def test_registered_values_are_masked_wherever_they_appear() -> None:
    token = unique("tok")
    register_secret(token)
    assert redact(f"Bearer {token}; again {token}.") == f"Bearer {MASK}; again {MASK}."
    assert redact("nothing secret here") == "nothing secret here"


def test_a_longer_secret_that_contains_a_shorter_one_is_masked_whole() -> None:
    short = unique("pw")
    register_secret(short)
    register_secret(f"{short}-and-more")
    assert redact(f"x {short}-and-more y") == f"x {MASK} y"


@pytest.mark.parametrize(("value", "masked"), [("abc", False), ("abcd", True)],
                         ids=["a value of three characters is too short to mask",
                              "a value of four characters is masked"])
def test_the_minimum_length_of_a_registered_value(value: str, masked: bool) -> None:
    register_secret(value)
    text = f"zz{value}zz"
    assert redact(text) == (f"zz{MASK}zz" if masked else text)


def test_a_short_resolved_value_is_returned_but_not_masked(tmp_path: Path) -> None:
    """A value too short to mask would hide innocent text everywhere; it is still handed to the app."""
    assert database_url(environment(tmp_path), {VARIABLE: "xyz"}) == "xyz"
    assert redact("xyz") == "xyz"


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql+psycopg://app:s3cr3t@db:5432/jobs", f"postgresql+psycopg://app:{MASK}@db:5432/jobs"),
    ("redis://:only-a-password@cache/0", f"redis://:{MASK}@cache/0"),
    ("amqp://user:pa:ss@broker/", f"amqp://user:{MASK}@broker/"),
    ("https://deploy:p%40ss@hooks.example.invalid/x", f"https://deploy:{MASK}@hooks.example.invalid/x"),
    ("from mysql://a:one@h1/x to mysql://b:two@h2/y", f"from mysql://a:{MASK}@h1/x to mysql://b:{MASK}@h2/y"),
    ("postgresql://app@db/jobs", "postgresql://app@db/jobs"),
    ("http://127.0.0.1:8102/health", "http://127.0.0.1:8102/health"),
    ("ssh git@github.com:org/repo.git", "ssh git@github.com:org/repo.git"),
], ids=["a database URL's password", "a password without a user name", "a password with a colon in it",
        "a percent-encoded password", "two URLs in one line", "a user without a password is left alone",
        "a host and port is not a credential", "an scp-style git address is not a credential"])
def test_url_credentials_are_masked_without_being_registered(text: str, expected: str) -> None:
    assert redact(text) == expected


# --- resolve_app_environment ------------------------------------------------------------------------------


def with_app_secrets(text: str) -> str:
    secrets = ('[service.secrets]\nJOBAPP_SMTP_PASSWORD = { env = "JOBAPP_SMTP_PASSWORD_SOURCE" }\n'
               'JOBAPP_API_TOKEN = { env = "JOBAPP_API_TOKEN_SOURCE" }\n\n')
    return text.replace("[service.env]", secrets + "[service.env]", 1)


def test_the_app_gets_its_plain_variables_its_secrets_and_the_database_url(tmp_path: Path) -> None:
    smtp, token, url = unique("smtp"), unique("api"), unique("sqlite:////srv/app")
    (tmp_path / "sandbox.env").write_text(f"JOBAPP_API_TOKEN_SOURCE={token}\n{VARIABLE}={url}\n")
    config = environment(tmp_path, with_app_secrets)
    resolved = resolve_app_environment(config, {"JOBAPP_SMTP_PASSWORD_SOURCE": smtp})
    assert resolved == {**config.service.env, "JOBAPP_SMTP_PASSWORD": smtp, "JOBAPP_API_TOKEN": token,
                        "JOBAPP_DATABASE_URL": url}
    assert redact(f"{smtp} {token} {url}") == f"{MASK} {MASK} {MASK}"


def test_a_missing_app_secret_is_named_by_its_field(tmp_path: Path) -> None:
    config = environment(tmp_path, with_app_secrets)
    with pytest.raises(ConfigError) as caught:
        resolve_app_environment(config, {VARIABLE: "sqlite:///x.db", "JOBAPP_API_TOKEN_SOURCE": "t0ken"})
    assert caught.value.step == "secret service.secrets.JOBAPP_SMTP_PASSWORD of environment production"
    assert "environment variable JOBAPP_SMTP_PASSWORD_SOURCE is not set" in caught.value.cause


def test_required_variables_that_nothing_provides_are_named_with_where_to_add_them(tmp_path: Path) -> None:
    config = environment(tmp_path, lambda text: text.replace(
        'required_env = ["JOBAPP_ENV"',
        'required_env = ["JOBAPP_SMTP_PASSWORD", "JOBAPP_ENV", "JOBAPP_API_TOKEN"'))
    with pytest.raises(ConfigError) as caught:
        resolve_app_environment(config, {VARIABLE: "sqlite:///x.db"})
    assert (caught.value.step, caught.value.cause, caught.value.action) == (
        "verify environment configuration of production",
        "required variable(s) JOBAPP_SMTP_PASSWORD, JOBAPP_API_TOKEN are not configured",
        "add them to [service.env] or [service.secrets] in the environment file")


def test_the_database_url_counts_as_a_required_variable(tmp_path: Path) -> None:
    config = environment(tmp_path)
    assert "JOBAPP_DATABASE_URL" in config.service.required_env
    resolved = resolve_app_environment(config, {VARIABLE: "sqlite:///x.db"})
    assert resolved["JOBAPP_DATABASE_URL"] == "sqlite:///x.db"


def test_a_value_source_describes_itself() -> None:
    assert ValueSource(env="DATABASE_URL").describe() == "environment variable DATABASE_URL"
    assert ValueSource(secret="db-url").describe() == "Prefect Secret block 'db-url'"


# --- env files ---------------------------------------------------------------------------------------------


ENV_FILES = [
    pytest.param("A=1\nB=two\n", {"A": "1", "B": "two"}, id="one KEY=VALUE per line"),
    pytest.param("# the database\n\nA=1\n   \n# B=2\n", {"A": "1"},
                 id="comments and blank lines are skipped"),
    pytest.param("export A=1\nexport  B=2\n", {"A": "1", "B": "2"}, id="an export prefix is dropped"),
    pytest.param(" A = spaced  \n", {"A": "spaced"},
                 id="spaces around the key, the equals sign and the value go"),
    pytest.param("A='single'\nB=\"double\"\n", {"A": "single", "B": "double"}, id="quotes around a value go"),
    pytest.param('A="  padded  "\n', {"A": "  padded  "}, id="spaces inside quotes stay"),
    pytest.param("URL=postgresql://u:p@db/x?sslmode=require&a=b\n",
                 {"URL": "postgresql://u:p@db/x?sslmode=require&a=b"}, id="equals signs in a value stay"),
    pytest.param("PW=abc#def\n", {"PW": "abc#def"}, id="a hash inside an unquoted value stays"),
    pytest.param('PW="x # y"\n', {"PW": "x # y"}, id="a hash inside quotes stays"),
    pytest.param("PW=pa$word${HOME}\n", {"PW": "pa$word${HOME}"}, id="no interpolation of dollar signs"),
    pytest.param("A=\n", {"A": ""}, id="an empty value is an empty string"),
    pytest.param("A=first\nA=second\n", {"A": "second"}, id="the last of a repeated key wins"),
    pytest.param("PW=pässwörd-€\n", {"PW": "pässwörd-€"}, id="values are UTF-8"),
    pytest.param("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}, id="Windows line endings"),
    pytest.param("URL=sqlite:////srv/app.db  # local copy\n", {"URL": "sqlite:////srv/app.db"},
                 id="a comment after an unquoted value is not part of it"),
    pytest.param('PW=pa55"\n', {"PW": 'pa55"'}, id="an unquoted value ending in a quote keeps it"),
    pytest.param("PW='say \"hi\"'\n", {"PW": 'say "hi"'}, id="double quotes inside single quotes stay"),
]


@pytest.mark.parametrize(("text", "expected"), ENV_FILES)
def test_an_env_file_reads_as_a_user_expects(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    path = tmp_path / "app.env"
    path.write_bytes(text.encode("utf-8"))
    assert read_env_file(path) == expected


def test_a_line_without_an_equals_sign_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\n# the token\nexport API_TOKEN\n")
    with pytest.raises(ConfigError) as caught:
        read_env_file(path)
    assert (caught.value.step, caught.value.cause, caught.value.action) == (
        f"env file {path}", "line 3 has no '='", "write KEY=VALUE on each line")


def test_an_env_file_value_reaches_the_app_exactly(tmp_path: Path) -> None:
    password = unique("p@ss=w#rd")
    url = f"postgresql://app:{password}@db/app"
    (tmp_path / "sandbox.env").write_text(f"# production\nexport {VARIABLE}='{url}'\n")
    assert database_url(environment(tmp_path), {}) == url
    assert password not in redact(url)
