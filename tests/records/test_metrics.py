"""The orchestrator's metrics from a known ledger: the exposition, the node-exporter textfile read back
with prometheus-client's parser, and pushes to a real Pushgateway (with and without basic auth)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import ConfigError
from records.ledger import Ledger
from records.metrics import gateway_and_handler, publish_metrics, render, shown_url, textfile_path
from tests.conftest import free_ports
from tests.tasks.release_history import at, environment_file, write_history

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
# bcrypt of GATEWAY_PASSWORD, as the Pushgateway's web config wants it (cost 4: a test needs no more).
GATEWAY_USER, GATEWAY_PASSWORD = "deployer", "s3cr3t-pass"
GATEWAY_HASH = "$2b$04$K4gvD5wnMduHKgDuSxT8bOLriYHL6evKRZotcSPaW0EZPaiyNK99S"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample as (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted({"environment": "production", **labels}.items())))]


def config_with(tmp_path: Path, metrics: str = "") -> EnvironmentConfig:
    return load_environment_file(environment_file(tmp_path, metrics))


@pytest.fixture
def config(tmp_path: Path) -> EnvironmentConfig:
    return config_with(tmp_path)


@pytest.fixture
def ledger(config: EnvironmentConfig) -> Iterator[Ledger]:
    book = Ledger.for_state_dir(config.state_dir)
    write_history(book)
    yield book
    book.engine.dispose()


# What the month of release_history gives, over the whole ledger (dry runs and rollback runs apart).
EXPECTED = {
    ("deploy_deployments", "succeeded"): 5.0,  # v0, v1, v3, v5, v7
    ("deploy_deployments", "failed"): 0.0,
    ("deploy_deployments", "aborted"): 1.0,
    ("deploy_deployments", "rolled_back"): 2.0,  # v2, and v4 which the watch rolled back
    ("deploy_deployments", "rollback_failed"): 1.0,
    ("deploy_deployments", "noop"): 1.0,  # the dry run is not counted
    ("deploy_deployments", "running"): 1.0,
    ("deploy_rollbacks", "succeeded"): 2.0,
    ("deploy_rollbacks", "failed"): 2.0,  # v6's, and the one that failed before naming its subject
    ("deploy_rollbacks", "noop"): 1.0,
    ("deploy_rollbacks", "running"): 0.0,
}


def assert_the_month(found: Samples) -> None:
    for (name, outcome), expected in EXPECTED.items():
        assert value(found, name, outcome=outcome) == expected, (name, outcome)
    assert value(found, "deploy_success_ratio") == 5 / 8  # aborted and noop count neither way
    assert value(found, "deploy_success_ratio_target") == 0.95
    assert value(found, "deploy_last_success_timestamp_seconds") == at(28, 12).timestamp()
    # The last deploy that changed production is v7 (v8 is still running): 11:25 to 12:00.
    assert value(found, "deploy_last_duration_seconds") == 35 * 60
    assert value(found, "deploy_last_step_duration_seconds", step="check-migrations") == 15.5  # two phases
    assert value(found, "deploy_last_step_duration_seconds", step="backup-database") == 120.0
    assert value(found, "deploy_last_step_duration_seconds", step="run-migrations") == 30.0
    assert value(found, "deploy_last_phase_duration_seconds", phase="approvals") == 900.0
    assert value(found, "deploy_last_phase_duration_seconds", phase="verify-prerequisites") == 300.5
    steps = {dict(labels)["step"] for name, labels in found if name == "deploy_last_step_duration_seconds"}
    assert steps == {"check-migrations", "backup-database", "run-migrations"}


def test_the_exposition_of_a_known_month(config: EnvironmentConfig, ledger: Ledger) -> None:
    found = samples(render(config, ledger).decode())
    assert_the_month(found)
    environments = {dict(labels).get("environment") for _, labels in found}
    assert environments == {"production"}  # the staging release is not counted, nor labelled


def test_its_own_registry_never_the_global_one(config: EnvironmentConfig, ledger: Ledger) -> None:
    render(config, ledger)
    render(config, ledger)  # a second registry of the same names: the global one would refuse it
    assert REGISTRY.get_sample_value("deploy_success_ratio", {"environment": "production"}) is None


def test_an_empty_ledger_has_counts_of_zero_and_no_ratio(config: EnvironmentConfig) -> None:
    found = samples(render(config, Ledger.for_state_dir(config.state_dir)).decode())
    assert value(found, "deploy_deployments", outcome="succeeded") == 0.0
    assert value(found, "deploy_success_ratio_target") == 0.95
    names = {name for name, _ in found}
    assert not names & {"deploy_success_ratio", "deploy_last_success_timestamp_seconds",
                        "deploy_last_duration_seconds", "deploy_last_step_duration_seconds"}


def test_the_figures_follow_the_ledger_from_one_publication_to_the_next(config: EnvironmentConfig,
                                                                          ledger: Ledger) -> None:
    ids = {r.ref: r.id for r in ledger.all_releases("production")}
    # Another process (the watch's rollback) rolls v7 back: the next publication says so.
    ledger.update(ids["v7"], outcome="rolled_back", restored_at=at(28, 14))
    found = samples(render(config, ledger).decode())
    assert value(found, "deploy_deployments", outcome="succeeded") == 4.0
    assert value(found, "deploy_deployments", outcome="rolled_back") == 3.0
    assert value(found, "deploy_success_ratio") == 4 / 8
    assert value(found, "deploy_last_success_timestamp_seconds") == at(20, 1).timestamp()  # v5
    assert value(found, "deploy_last_duration_seconds") == 35 * 60  # v7 is still the last that changed anything


def test_the_textfile_by_default_in_the_state_directory(config: EnvironmentConfig, ledger: Ledger) -> None:
    where = publish_metrics(config, ledger)
    path = config.state_dir / "metrics" / "deploy_production.prom"
    assert textfile_path(config) == path
    assert where == f"metrics of production published to the textfile {path}"
    assert_the_month(samples(path.read_text()))
    assert os.listdir(path.parent) == ["deploy_production.prom"]  # no temporary file left behind


def test_the_textfile_directory_is_relative_to_the_environment_file(tmp_path: Path) -> None:
    config = config_with(tmp_path, 'textfile_directory = "node-exporter/textfiles"')
    assert config.metrics.textfile_directory == tmp_path / "node-exporter" / "textfiles"
    ledger = Ledger.for_state_dir(config.state_dir)
    write_history(ledger)
    publish_metrics(config, ledger)
    written = tmp_path / "node-exporter" / "textfiles" / "deploy_production.prom"
    assert_the_month(samples(written.read_text()))


def test_a_textfile_that_cannot_be_written_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "not-a-directory").write_text("")
    config = config_with(tmp_path, 'textfile_directory = "not-a-directory"')
    with caplog.at_level(logging.WARNING, logger="deploy.metrics"):
        where = publish_metrics(config, Ledger.for_state_dir(config.state_dir))
    assert where.startswith(f"metrics of production not published to the textfile {tmp_path}/not-a-directory/")
    assert [r.getMessage() for r in caplog.records] == [where]


def test_a_ledger_that_cannot_be_read_is_a_warning(config: EnvironmentConfig, ledger: Ledger,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE steps")
    with caplog.at_level(logging.WARNING, logger="deploy.metrics"):
        where = publish_metrics(config, ledger)
    assert "not published" in where and "no such table: steps" in where
    assert not (config.state_dir / "metrics" / "deploy_production.prom").exists()


def test_metrics_configuration_is_checked(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert (config.metrics.pushgateway_url, config.metrics.textfile_directory) == (None, None)
    assert (config.metrics.job, config.metrics.success_target) == ("production_deployment", 0.95)
    for line, problem in [
        ('pushgateway_url = "127.0.0.1:9091"', "metrics.pushgateway_url: use scheme://host:port"),
        ('pushgateway_url = "http://gw:9091/?token=x"', "metrics.pushgateway_url: use scheme://host:port"),
        ("success_target = 1.5", "metrics.success_target: Input should be less than or equal to 1"),
        ('job = ""', "metrics.job: String should have at least 1 character"),
        ('push_gateway = "http://gw:9091"', "did you mean 'pushgateway_url'?"),
    ]:
        with pytest.raises(ConfigError) as caught:
            config_with(tmp_path, line)
        assert problem in str(caught.value), line


# A real Pushgateway ----------------------------------------------------------------------------------

def pushgateway_binary() -> str:
    if os.access(PUSHGATEWAY, os.X_OK):
        return PUSHGATEWAY
    found = shutil.which("prometheus-pushgateway")
    if found:
        return found
    if os.environ.get("REQUIRE_POSTGRES") == "1":  # CI
        pytest.fail(f"CI needs the Pushgateway: {PUSHGATEWAY} is missing. Install Debian's prometheus-pushgateway")
    pytest.skip(f"{PUSHGATEWAY} is not installed (Debian's prometheus-pushgateway); the push is not tested")


@contextmanager
def running_pushgateway(tmp_path: Path, web_config: str | None = None) -> Iterator[str]:
    """A Pushgateway on a free loopback port, keeping nothing on disk; stopped afterwards."""
    port = free_ports(1)[0]
    argv = [pushgateway_binary(), f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=",
            "--log.level=warn"]
    if web_config is not None:
        (tmp_path / "web.yml").write_text(web_config)
        argv.append(f"--web.config.file={tmp_path / 'web.yml'}")
    log = (tmp_path / "pushgateway.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Pushgateway did not start: {(tmp_path / 'pushgateway.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def group(found: Samples, job: str = "production_deployment") -> Samples:
    """The samples of one pushed group, without the labels the Pushgateway adds (job, and instance="")."""
    members: Samples = {}
    for (name, labels), number in found.items():
        named = dict(labels)
        if named.pop("job", None) == job and named.pop("instance", None) == "":
            members[(name, tuple(sorted(named.items())))] = number
    return members


@pytest.mark.slow
def test_pushed_to_a_real_pushgateway(tmp_path: Path) -> None:
    with running_pushgateway(tmp_path) as url:
        config = config_with(tmp_path, f'pushgateway_url = "{url}"')
        ledger = Ledger.for_state_dir(config.state_dir)
        write_history(ledger)
        where = publish_metrics(config, ledger)
        assert where == (f"metrics of production published to the Pushgateway at {url} "
                         "(job=production_deployment, environment=production)")
        found = group(samples(httpx.get(f"{url}/metrics").text))
        # Every series carries the grouping key: job and environment.
        assert_the_month(found)
        assert value(found, "push_time_seconds") > 0
        assert not (config.state_dir / "metrics").exists()  # pushed, so no textfile

        # The next deploy (v9) ran no recorded step: the push replaces the group, so v7's steps are gone.
        ledger.open_release(environment="production", ref="v9", outcome="succeeded", code_changed=True,
                            started_at=at(31, 11) + timedelta(hours=1), finished_at=at(31, 12, 40))
        publish_metrics(config, ledger)
        found = group(samples(httpx.get(f"{url}/metrics").text))
        assert value(found, "deploy_last_duration_seconds") == 40 * 60
        assert not [n for n, _ in found if n == "deploy_last_step_duration_seconds"]
        assert value(found, "deploy_success_ratio") == 6 / 9


@pytest.mark.slow
def test_a_pushgateway_behind_basic_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    web_config = f"basic_auth_users:\n  {GATEWAY_USER}: {GATEWAY_HASH}\n"
    with running_pushgateway(tmp_path, web_config) as url:
        # Credentials never sit in an environment file: the URL comes from a variable.
        monkeypatch.setenv("PUSHGATEWAY_URL", url.replace("http://", f"http://{GATEWAY_USER}:{GATEWAY_PASSWORD}@"))
        config = config_with(tmp_path, 'pushgateway_url = { env = "PUSHGATEWAY_URL" }')
        ledger = Ledger.for_state_dir(config.state_dir)
        write_history(ledger)
        with caplog.at_level(logging.INFO):
            where = publish_metrics(config, ledger)
        assert where == ("metrics of production published to the Pushgateway at $PUSHGATEWAY_URL "
                         "(job=production_deployment, environment=production)")
        found = group(samples(httpx.get(f"{url}/metrics", auth=(GATEWAY_USER, GATEWAY_PASSWORD)).text))
        assert value(found, "deploy_success_ratio") == 5 / 8

        # Without the credentials the gateway refuses the push: a warning, never an exception.
        refused = publish_metrics(config_with(tmp_path, f'pushgateway_url = "{url}"'), ledger)
        assert refused.startswith(f"metrics of production not published to the Pushgateway at {url} ")
        assert "401" in refused
    assert GATEWAY_PASSWORD not in where + refused + caplog.text


def test_an_unreachable_pushgateway_is_a_warning_without_its_password(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_ports(1)[0]
    monkeypatch.setenv("PUSHGATEWAY_URL", f"http://ops:hunter2-pass@127.0.0.1:{port}")
    config = config_with(tmp_path, 'pushgateway_url = { env = "PUSHGATEWAY_URL" }')
    ledger = Ledger.for_state_dir(config.state_dir)
    with caplog.at_level(logging.WARNING, logger="deploy.metrics"):
        where = publish_metrics(config, ledger)
    assert where.startswith("metrics of production not published to the Pushgateway at $PUSHGATEWAY_URL "
                            "(job=production_deployment, environment=production)")
    assert "Connection refused" in where
    assert caplog.records and all("hunter2-pass" not in r.getMessage() for r in caplog.records)
    assert not (config.state_dir / "metrics").exists()  # no silent fallback to a textfile


@pytest.mark.parametrize(("url", "shown", "bare"), [
    ("http://127.0.0.1:9091", "http://127.0.0.1:9091", "http://127.0.0.1:9091"),
    ("https://ops:p%40ss@gw.example:9091/push", "https://ops:********@gw.example:9091/push",
     "https://gw.example:9091/push"),
    ("https://a1b2c3d4token@gw.example", "https://********@gw.example", "https://gw.example"),
])
def test_a_pushgateway_url_is_shown_without_its_credentials(url: str, shown: str, bare: str) -> None:
    assert shown_url(url) == shown
    assert gateway_and_handler(url)[0] == bare  # the credentials go in an Authorization header instead


def test_credentials_written_in_the_file_are_refused(tmp_path: Path) -> None:
    from deployments.errors import ConfigError

    with pytest.raises(ConfigError, match="credentials are never written in an environment file"):
        config_with(tmp_path, 'pushgateway_url = "http://ops:hunter2-pass@127.0.0.1:9091"')


def test_a_pushgateway_variable_that_is_not_set_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    config = config_with(tmp_path, 'pushgateway_url = { env = "PUSHGATEWAY_URL" }')
    where = publish_metrics(config, Ledger.for_state_dir(config.state_dir))
    assert where.startswith("metrics of production not published") and "PUSHGATEWAY_URL is not set" in where
