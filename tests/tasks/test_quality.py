"""Quality gates on real release trees: the release's own pytest suite and a real bandit scan."""

from __future__ import annotations

import re
import sqlite3
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy import text as text_

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import LiveDatabaseTouched, PreflightError
from tasks.quality import ScanReport, failing_tests, run_release_tests, run_security_scan, runner_result_line
from tests.alembic_projects import alembic_project, env_py

PROJECT = Path(__file__).resolve().parents[2]
PYTHON = PROJECT / ".venv" / "bin" / "python"
PYTEST = '["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider"]'
# A variable passed to subprocess with shell=True: bandit B602 at HIGH severity.
SHELL_INJECTION = "import subprocess\n\n\ndef run(command):\n    return subprocess.Popen(command, shell=True)\n"


def environment(tmp_path: Path, test_command: str = PYTEST, scan_command: str | None = None) -> EnvironmentConfig:
    text = (PROJECT / "deployments" / "production.toml").read_text()
    text = text.replace("../.sandbox", str(tmp_path)).replace('"../.venv/bin/python"', f'"{PYTHON}"')
    text = re.sub(r"^test_command = .*$", f"test_command = {test_command}", text, flags=re.M)
    if scan_command is not None:
        text = text.replace("[prerequisites]\n", f"[prerequisites]\nscan_command = {scan_command}\n")
    (tmp_path / "production.toml").write_text(text)
    return load_environment_file(tmp_path / "production.toml")


@pytest.fixture(autouse=True)
def live_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Production's database, which the release's tests are never given (and must never change)."""
    path = tmp_path / "live.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    monkeypatch.setenv("JOBAPP_PRODUCTION_DATABASE_URL", f"sqlite:///{path}")
    return path


def release_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    tree = tmp_path / "release"
    for name, content in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(content)
    return tree


def test_passing_release_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The release's suite runs with CI=1 and none of the orchestrator's variables.
    monkeypatch.setenv("DEPLOY_WEBHOOK_TOKEN", "orchestrator-only-value")
    tree = release_tree(tmp_path, {
        "tests/test_app.py": (
            "import os\n\n\ndef test_runs_as_ci():\n    assert os.environ['CI'] == '1'\n\n\n"
            "def test_sees_no_orchestrator_secret():\n    assert 'DEPLOY_WEBHOOK_TOKEN' not in os.environ\n"
            "    assert not any(k.startswith('JOBAPP_') for k in os.environ)\n"),
    })
    summary = run_release_tests.fn(environment(tmp_path), tree)
    assert re.fullmatch(r"2 passed in [\d.]+s", summary), summary
    assert not (tree / ".pytest_cache").exists()


def test_release_tests_that_reach_the_live_database_anyway_fail_loudly(tmp_path: Path, live_database: Path) -> None:
    # Given no database setting, a suite whose settings fall back to production's file still finds it.
    tree = release_tree(tmp_path, {"tests/test_app.py": (
        "import sqlite3\n\n\ndef test_migrates_what_it_finds():\n"
        f"    sqlite3.connect({str(live_database)!r}).execute('ALTER TABLE jobs ADD COLUMN salary INTEGER')\n")})
    with pytest.raises(LiveDatabaseTouched) as caught:
        run_release_tests.fn(environment(tmp_path), tree)
    assert "the release's tests changed the LIVE database of production" in str(caught.value)
    assert caught.value.changed_production


@pytest.mark.parametrize(("stdout", "stderr", "summary"), [
    ("....\n4 passed in 0.12s\n", "", "4 passed in 0.12s"),
    ("== 1 failed, 3 passed, 2 warnings in 1.50s ==\n", "", "1 failed, 3 passed, 2 warnings in 1.50s"),
    # A suite that migrates first: alembic's INFO lines come last, on stderr; the runner's line is the one.
    ("..\n2 passed in 0.30s\n", "INFO  [alembic.runtime.migration] Running upgrade  -> 0001\n", "2 passed in 0.30s"),
    ("", "....\n----------------------------------------------------------------------\nRan 4 tests in 0.004s\n\nOK\n",
     "Ran 4 tests in 0.004s"),
    ("all good\n", "", None),
])
def test_the_summary_is_the_test_runners_own_result_line(stdout: str, stderr: str, summary: str | None) -> None:
    assert runner_result_line(stdout, stderr) == summary


def test_the_failing_tests_are_named_from_the_short_summary() -> None:
    out = ("F.E\n=== short test summary info ===\nFAILED tests/test_a.py::test_one - assert 1 == 2\n"
           "ERROR tests/test_b.py::test_two - RuntimeError\n1 failed, 1 passed, 1 error in 0.2s\n")
    assert failing_tests(out) == ["tests/test_a.py::test_one", "tests/test_b.py::test_two"]


def test_the_tests_get_their_settings_and_a_database_of_their_own_migrated_to_the_release(
        tmp_path: Path, live_database: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEASE_TEST_TOKEN", "tok-release-tests")
    tree = tmp_path / "release"
    alembic_project(tree, {"0001": (None, 'op.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")',
                                    "def downgrade():\n    op.drop_table('items')\n")}, env_py("JOBAPP_DATABASE_URL"))
    (tree / "test_release.py").write_text(textwrap.dedent(f"""\
        import os, sqlite3

        def test_its_settings_and_its_own_database():
            assert os.environ["TEST_MODE"] == "1" and os.environ["API_TOKEN"] == "tok-release-tests"
            url = os.environ["JOBAPP_DATABASE_URL"]
            assert url.startswith("sqlite:///") and {str(live_database)!r} not in url
            tables = {{row[0] for row in sqlite3.connect(url.removeprefix("sqlite:///")).execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}}
            assert {{"items", "alembic_version"}} <= tables
            open("{tmp_path / 'seen-url'}", "w").write(url)
        """))
    config = environment(tmp_path)
    text = (tmp_path / "production.toml").read_text().replace("[prerequisites]\n", (
        '[prerequisites]\ntest_database = true\nenv = { TEST_MODE = "1" }\n'
        'secrets = { API_TOKEN = { env = "RELEASE_TEST_TOKEN" } }\n'))
    (tmp_path / "production.toml").write_text(text)
    summary = run_release_tests.fn(load_environment_file(tmp_path / "production.toml"), tree)
    assert re.fullmatch(r"1 passed in [\d.]+s \(on a database of their own, migrated to the release's head\)", summary)
    scratch = Path((tmp_path / "seen-url").read_text().removeprefix("sqlite:///"))
    assert not scratch.exists(), "the tests' database is dropped after them"
    with sqlite3.connect(live_database) as conn:  # production's was never touched
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["jobs"]
    assert config.prerequisites.test_database is False  # the committed file asks for none


@pytest.mark.postgres
def test_on_postgresql_the_tests_database_is_made_beside_the_live_one_and_dropped(
        tmp_path: Path, postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBAPP_PRODUCTION_DATABASE_URL", postgres_database)
    tree = tmp_path / "release"
    alembic_project(tree, {"0001": (None, 'op.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")',
                                    "def downgrade():\n    op.drop_table('items')\n")}, env_py("JOBAPP_DATABASE_URL"))
    (tree / "test_release.py").write_text(textwrap.dedent(f"""\
        import os
        from sqlalchemy import create_engine, inspect

        def test_its_own_database():
            url = os.environ["JOBAPP_DATABASE_URL"]
            assert url.rsplit("/", 1)[1] != {postgres_database.rsplit("/", 1)[1]!r}
            assert "items" in inspect(create_engine(url)).get_table_names()
            open("{tmp_path / 'seen-url'}", "w").write(url.rsplit("/", 1)[1])
        """))
    environment(tmp_path)
    text = (tmp_path / "production.toml").read_text().replace("[prerequisites]\n", "[prerequisites]\ntest_database = true\n")
    (tmp_path / "production.toml").write_text(text)
    summary = run_release_tests.fn(load_environment_file(tmp_path / "production.toml"), tree)
    assert summary.startswith("1 passed in ")
    seen = (tmp_path / "seen-url").read_text()
    engine = create_engine(postgres_database)
    with engine.connect() as conn:
        assert conn.execute(text_("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": seen}).scalar() == 0
        assert inspect(conn).get_table_names() == []  # the live database: untouched
    engine.dispose()


def test_failing_release_tests_stop_the_deploy(tmp_path: Path) -> None:
    tree = release_tree(tmp_path, {
        "test_ok.py": "def test_ok():\n    assert True\n",
        "test_broken.py": "def test_broken():\n    assert 1 + 1 == 3\n",
    })
    with pytest.raises(PreflightError) as caught:
        run_release_tests.fn(environment(tmp_path), tree)
    assert caught.value.step == "run release tests"
    assert re.fullmatch(r"the release's tests failed \(1 failed, 1 passed in [\d.]+s; failing: test_broken.py::test_broken\)",
                        caught.value.cause)
    assert caught.value.action == "fix the release and push it again; nothing was changed"


def test_a_tree_without_tests_fails_too(tmp_path: Path) -> None:
    # pytest exits 5 when it collects nothing: a release whose tests vanished is not a passing release.
    tree = release_tree(tmp_path, {"app.py": "VALUE = 1\n"})
    with pytest.raises(PreflightError, match=r"the release's tests failed \(no tests ran in"):
        run_release_tests.fn(environment(tmp_path), tree)


def test_no_test_command_skips(tmp_path: Path) -> None:
    tree = release_tree(tmp_path, {"test_broken.py": "def test_broken():\n    assert False\n"})
    assert run_release_tests.fn(environment(tmp_path, test_command="[]"), tree) == (
        "no test_command configured: skipped")


def test_a_test_command_that_cannot_start(tmp_path: Path) -> None:
    tree = release_tree(tmp_path, {"test_ok.py": "def test_ok():\n    pass\n"})
    config = environment(tmp_path, test_command=f'["{tmp_path}/no-such-python", "-m", "pytest"]')
    with pytest.raises(PreflightError) as caught:
        run_release_tests.fn(config, tree)
    assert caught.value.step == "run release tests"
    assert caught.value.cause == f"cannot start {tmp_path}/no-such-python (No such file or directory)"
    assert caught.value.action == "fix prerequisites.test_command; nothing was changed"


def test_bandit_finds_a_high_severity_issue(tmp_path: Path) -> None:
    tree = release_tree(tmp_path, {
        "jobapp/__init__.py": "",
        "jobapp/shell.py": SHELL_INJECTION,
        # Tests and migrations are not shipped code; they are left out of the scan.
        "tests/test_shell.py": SHELL_INJECTION,
        "migrations/versions/0001_x.py": SHELL_INJECTION,
    })
    with pytest.raises(PreflightError) as caught:
        run_security_scan.fn(environment(tmp_path), tree)
    assert caught.value.step == "run security scan"
    assert caught.value.cause.startswith("bandit found 1 high-severity issue(s): jobapp/shell.py:5 B602 ")
    assert "tests/" not in caught.value.cause and "migrations/" not in caught.value.cause
    assert caught.value.action == "fix them in the release; nothing was changed"


@pytest.mark.parametrize("shipped", ["tests_support.py", "migrations_helpers.py", ".github/scripts/release.py",
                                     "testsuite/runner.py"])
def test_files_whose_names_start_like_an_excluded_directory_are_still_scanned(tmp_path: Path, shipped: str) -> None:
    tree = release_tree(tmp_path, {shipped: SHELL_INJECTION, "tests/test_x.py": "", "migrations/env.py": ""})
    (tree / ".git").mkdir()
    with pytest.raises(PreflightError, match=rf"bandit found 1 high-severity issue\(s\): {re.escape(shipped)}:5 B602"):
        run_security_scan.fn(environment(tmp_path), tree)


def test_a_clean_tree_passes_with_its_counts(tmp_path: Path) -> None:
    tree = release_tree(tmp_path, {
        "jobapp/run.py": "import subprocess\n\n\ndef version():\n    return subprocess.run(['git', '--version'])\n",
        "tests/test_shell.py": SHELL_INJECTION,
    })
    report = run_security_scan.fn(environment(tmp_path), tree)
    assert isinstance(report, ScanReport)
    assert report.high == 0 and report.findings == []
    assert report.low >= 1  # importing subprocess is worth a note, not a stop
    assert report.describe() == f"high 0, medium {report.medium}, low {report.low}"


def test_a_custom_scanner_that_reports_problems(tmp_path: Path) -> None:
    scanner = ('["{python}", "-c", "import sys; print(\'scanning {workspace}\'); '
               'print(\'app.py:3 weak hash\'); print(\'1 finding\'); sys.exit(1)"]')
    tree = release_tree(tmp_path, {"app.py": "import hashlib\n"})
    with pytest.raises(PreflightError) as caught:
        run_security_scan.fn(environment(tmp_path, scan_command=scanner), tree)
    assert caught.value.step == "run security scan"
    assert caught.value.cause == f"{PYTHON} reported problems: scanning {tree} / app.py:3 weak hash / 1 finding"
    assert "fix the findings or adjust the scanner's baseline" in caught.value.action


def test_a_custom_scanner_that_passes(tmp_path: Path) -> None:
    tree = release_tree(tmp_path, {"app.py": SHELL_INJECTION})
    config = environment(tmp_path, scan_command='["{python}", "-c", "pass"]')
    assert run_security_scan.fn(config, tree) == f"{PYTHON} passed"


def test_a_custom_scanner_that_is_not_installed(tmp_path: Path) -> None:
    tree = release_tree(tmp_path, {"app.py": "VALUE = 1\n"})
    config = environment(tmp_path, scan_command='["semgrep-is-not-installed-here", "--config", "auto"]')
    with pytest.raises(PreflightError) as caught:
        run_security_scan.fn(config, tree)
    assert caught.value.step == "run security scan"
    assert caught.value.cause == "cannot start semgrep-is-not-installed-here (No such file or directory)"
    assert "fix prerequisites.scan_command" in caught.value.action
