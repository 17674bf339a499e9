"""Environment files: the committed ones load; every bad file gives one error naming field and fix."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from deployctl.cli import main as deployctl
from deployments.config import (
    DEFAULT_ENVIRONMENTS_DIR,
    available_environments,
    environment_file,
    load_environment,
    load_environment_file,
)
from deployments.errors import ConfigError, InvalidInput
from deployments.logs import RunLogFilter
from deployments.secrets import MASK, read_env_file, redact, register_secret, resolve_app_environment
from sample_app.sandbox import DEFAULT_PORTS, render_environment

COMMITTED = DEFAULT_ENVIRONMENTS_DIR


def write_env(directory: Path, name: str, edit=None, text: str | None = None) -> Path:
    """An environment file for `name` based on the committed production file, edited as TOML text."""
    source = text if text is not None else (COMMITTED / "production.toml").read_text()
    source = source.replace('name = "production"', f'name = "{name}"').replace("../.sandbox", str(directory))
    if edit is not None:
        source = edit(source)
    path = directory / f"{name}.toml"
    path.write_text(source)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_environment_file(path)
    return str(caught.value)


def test_committed_files_are_the_default_sandbox_render() -> None:
    # The committed files are what `sandbox up` writes for .sandbox/, so they cannot drift apart.
    for env in ("staging", "production"):
        rendered = render_environment(env, "../.sandbox", "../.venv/bin/python", DEFAULT_PORTS[env])
        assert (COMMITTED / f"{env}.toml").read_text() == rendered


def test_committed_files_load_with_paths_relative_to_the_file() -> None:
    production = load_environment("production")
    staging = load_environment("staging")
    project = COMMITTED.parent
    assert production.source.workspace == project / ".sandbox" / "production" / "app"
    assert production.service.python == project / ".venv" / "bin" / "python"  # the symlink, not its target
    assert production.approvals.required_roles == ["team-lead", "product-owner"]
    assert production.prerequisites.staging_environment == "staging"
    assert not staging.requires_approval and production.requires_approval
    assert [c.name for c in production.critical_paths] == [
        "job-scraping", "ai-analysis", "document-generation", "email-integration"
    ]
    assert production.database.url.env == "JOBAPP_PRODUCTION_DATABASE_URL"


def test_no_secret_value_is_written_in_committed_files() -> None:
    for env in available_environments(COMMITTED):
        raw = tomllib.loads((COMMITTED / f"{env}.toml").read_text())
        assert set(raw["database"]["url"]) <= {"env", "secret"}
        assert "://" not in str(raw["database"]), "a URL (with a possible password) is written in the file"


def test_environment_names_come_from_the_files_that_exist(tmp_path: Path) -> None:
    assert available_environments(COMMITTED) == ["production", "staging"]
    for bad in ["../production", "prod", "production.toml", "", "Production", "/etc/passwd", "staging\n"]:
        with pytest.raises(InvalidInput) as caught:
            environment_file(bad, COMMITTED)
        assert "use one of: production, staging" in str(caught.value)


def test_unknown_key_names_the_field_and_suggests_the_spelling(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s.replace("grace_seconds = 5", "grace_secnds = 5"))
    message = error_of(path)
    assert "service.grace_secnds: unknown key" in message
    assert "did you mean 'grace_seconds'?" in message
    assert "deployctl check" in message


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s + "\n[rollbak]\nauto = true\n")
    assert "rollbak: unknown key" in error_of(path)


def test_wrong_type_names_the_field_and_the_value(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s.replace("timeout_seconds = 3600", 'timeout_seconds = "an hour"'))
    message = error_of(path)
    assert "approvals.timeout_seconds" in message and "'an hour'" in message


def test_missing_required_field(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s.replace('pid_file = ', 'pidfile_removed = ', 1)
                     .replace("pidfile_removed", "# pid_file removed"))
    assert "service.pid_file: required and missing; add it" in error_of(path)


def test_a_secret_written_in_the_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s.replace(
        'url = { env = "JOBAPP_PRODUCTION_DATABASE_URL" }', 'url = "postgresql://app:hunter2@db/app"'))
    message = error_of(path)
    assert "database.url: secret values are never written in the file" in message
    assert "hunter2" not in message


def test_a_value_source_needs_exactly_one_origin(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s.replace(
        'url = { env = "JOBAPP_PRODUCTION_DATABASE_URL" }', 'url = { env = "A", secret = "b" }'))
    assert "database.url: give exactly one of" in error_of(path)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s.replace('name = "prod"', 'name = "production"'))
    assert "name must match the file name: name = 'prod'" in error_of(path)


def test_bad_regex_and_reload_command(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s.replace('"CRITICAL"', '"CRIT(ICAL"'))
    assert "service.error_patterns" in error_of(path)
    path = write_env(tmp_path, "prod", lambda s: s.replace('reload = "usr2"', 'reload = "command"'))
    assert 'reload = "command" needs reload_command' in error_of(path)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write_env(tmp_path, "prod", lambda s: s + "\n[broken\n")
    assert "it is not valid TOML" in error_of(path)


def test_missing_secret_names_the_variable_and_the_fix(tmp_path: Path) -> None:
    config = load_environment_file(write_env(tmp_path, "prod"))
    with pytest.raises(ConfigError) as caught:
        resolve_app_environment(config, environ={})
    message = str(caught.value)
    assert "secret database.url of environment prod" in message
    assert "JOBAPP_PRODUCTION_DATABASE_URL is not set" in message
    assert "add it to an env file" in message


def test_secret_from_env_file_is_resolved_and_redacted(tmp_path: Path) -> None:
    (tmp_path / "sandbox.env").write_text("# comment\nJOBAPP_PRODUCTION_DATABASE_URL=postgresql://app:s3cr3t-pw@db/app\n")
    config = load_environment_file(write_env(tmp_path, "prod"))
    app_env = resolve_app_environment(config, environ={})
    assert app_env["JOBAPP_DATABASE_URL"] == "postgresql://app:s3cr3t-pw@db/app"
    assert app_env["JOBAPP_ENV"] == "production"
    assert "s3cr3t-pw" not in redact(f"connecting to {app_env['JOBAPP_DATABASE_URL']}")


def test_required_env_must_be_configured(tmp_path: Path) -> None:
    (tmp_path / "sandbox.env").write_text("JOBAPP_PRODUCTION_DATABASE_URL=sqlite:///x.db\n")
    path = write_env(tmp_path, "prod", lambda s: s.replace(
        'required_env = ["JOBAPP_ENV"', 'required_env = ["JOBAPP_SMTP_PASSWORD", "JOBAPP_ENV"'))
    with pytest.raises(ConfigError) as caught:
        resolve_app_environment(load_environment_file(path), environ={})
    assert "JOBAPP_SMTP_PASSWORD" in str(caught.value) and "[service.secrets]" in str(caught.value)


def test_env_file_syntax(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("export A='1'\nB=\"two\"\n\nC=x=y\n")
    assert read_env_file(env_file) == {"A": "1", "B": "two", "C": "x=y"}
    env_file.write_text("NOEQUALS\n")
    with pytest.raises(ConfigError, match="line 1 has no '='"):
        read_env_file(env_file)


def test_redaction_filter_masks_registered_values_and_url_passwords(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("tok-9f8e7d6c")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "posting with %s to %s", (
        "tok-9f8e7d6c", "https://user:pa55@hooks.example.invalid/x"), None)
    assert RunLogFilter().filter(record)
    assert record.getMessage() == f"posting with {MASK} to https://user:{MASK}@hooks.example.invalid/x"


def test_deployctl_check_reports_a_bad_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_env(tmp_path, "prod", lambda s: s.replace("keep = 10", "keep = 0"))
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(tmp_path))
    assert deployctl(["check", "prod"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "backups.keep: Input should be greater than or equal to 1 (got 0)" in err[0]


def test_deployctl_check_refuses_unknown_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(tmp_path))
    write_env(tmp_path, "prod")
    assert deployctl(["check", "--", "--upload-pack=touch /tmp/x"]) == 2
    assert deployctl(["check", "qa"]) == 2
    assert "unknown environment 'qa'. use one of: prod" in capsys.readouterr().err


def test_deployctl_check_finds_what_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing exists behind this file: every reachability check must say so, and nothing is created.
    (tmp_path / "sandbox.env").write_text(f"JOBAPP_PRODUCTION_DATABASE_URL=sqlite:///{tmp_path}/app.db\n")
    write_env(tmp_path, "prod", lambda s: s.replace("127.0.0.1:8102", "127.0.0.1:9"))
    monkeypatch.setenv("DEPLOY_ENVIRONMENTS_DIR", str(tmp_path))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert deployctl(["check", "prod"]) == 1
    out = capsys.readouterr().out
    assert "ok   secrets" in out
    for name in ("source repository", "workspace", "app process", "health", "database"):
        assert f"FAIL {name}" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_expected_failures_log_one_line_and_hook_noise_is_dropped() -> None:
    from deployments.errors import PreflightError

    error = PreflightError("check merged to main", "abc is not on origin/main", "merge it first")
    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed: %r", (error,),
                               (PreflightError, error, None))
    assert RunLogFilter().filter(record) and record.exc_info is None
    unexpected = ValueError("bug")
    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", (), (ValueError, unexpected, None))
    assert RunLogFilter().filter(record) and record.exc_info is not None  # a bug keeps its traceback
    noise = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1,
                              "Running hook '_on_running' in response to entering state 'Running'", (), None)
    assert not RunLogFilter().filter(noise)


@pytest.mark.parametrize(("given", "expected"), [
    ("../origin.git", "{parent}/origin.git"),
    ("repos/app.git", "{here}/repos/app.git"),
    ("/srv/git/app.git", "/srv/git/app.git"),
    ("https://git.example.test/team/app.git", "https://git.example.test/team/app.git"),
    ("git@git.example.test:team/app.git", "git@git.example.test:team/app.git"),
    ("file:///srv/git/app.git", "file:///srv/git/app.git"),
], ids=["a path up", "a path down", "an absolute path", "an https URL", "an scp-like address", "a file URL"])
def test_a_repository_path_is_relative_to_the_file_and_a_url_is_kept(tmp_path: Path, given: str, expected: str) -> None:
    from deployments.config import load_environment_file

    here = tmp_path / "envs"
    here.mkdir()
    text = (Path(__file__).resolve().parents[2] / "deployments" / "production.toml").read_text()
    start = text.index("repository = ")
    end = text.index("\n", start)
    (here / "production.toml").write_text(text[:start] + f'repository = "{given}"' + text[end:])
    config = load_environment_file(here / "production.toml")
    assert config.source.repository == expected.format(parent=tmp_path, here=here)
