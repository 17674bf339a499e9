"""The migration runner (tasks/migration_runner.py) on its own, against a tiny real Alembic project and a
real SQLite database in tmp_path: what `status` reports, what `upgrade`, `downgrade` and `rehearse`
leave in the database, the JSON on the last line of stdout, and what a failure prints.

Most runs call its `main()` in this process (alembic is installed here as in an app's venv); the
runs that check exit codes and output start it the way the orchestrator does, `python -c <source>`
in the app's tree."""

from __future__ import annotations

import ast
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tasks import migration_runner
from tasks.migrations import RUNNER
from tests.alembic_projects import alembic_project as shared_alembic_project
from tests.alembic_projects import env_py

URL_VARIABLE = "RUNNER_TEST_DATABASE_URL"
ENV_PY = env_py(URL_VARIABLE)


def create(name: str) -> str:
    return f'op.execute("CREATE TABLE {name} (id INTEGER PRIMARY KEY)")'


def drop(name: str) -> str:
    return f'def downgrade():\n    op.execute("DROP TABLE {name}")\n'


LINEAR = {
    "0001": (None, create("jobs"), drop("jobs")),
    "0002": ("0001", create("applications"), drop("applications")),
    "0003": ("0002", create("documents"), "def downgrade():\n    pass\n"),
}


def alembic_project(root: Path, revisions: dict[str, tuple[str | None, str, str]]) -> Path:
    return shared_alembic_project(root, revisions, ENV_PY)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tree = alembic_project(tmp_path / "app", LINEAR)
    monkeypatch.setenv(URL_VARIABLE, f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.chdir(tree)
    return tree


def runner(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """`main()` with `args`, in this process; its exit code must be 0; the JSON of its last line."""
    monkeypatch.setattr(sys, "argv", ["migration_runner.py", *args])
    assert migration_runner.main() == 0
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1])


def in_app(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The runner as the orchestrator starts it: its source through -c, in the app's tree."""
    argv = [sys.executable, "-c", RUNNER.read_text(), *args, "--config", "alembic.ini"]
    return subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=60)


def revision_and_tables(database: Path) -> tuple[list[str], list[str]]:
    with sqlite3.connect(database) as conn:
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        revision = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")] \
            if "alembic_version" in tables else []
    conn.close()
    return revision, [t for t in tables if t != "alembic_version"]


# --- status -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "known", "pending"), [
    ("", True, ["0001", "0002", "0003"]),
    ("0001", True, ["0002", "0003"]),
    ("0002", True, ["0003"]),
    ("0003", True, []),
    ("0009", False, []),
], ids=["a database alembic never touched has every revision pending, oldest first",
        "a database at the first revision has the later two pending",
        "a database one behind has the head pending",
        "a database at the head has nothing pending",
        "a revision the release does not know is reported unknown, with nothing pending"])
def test_status_lists_what_is_pending(project: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str], current: str, known: bool,
                                      pending: list[str]) -> None:
    payload = runner(monkeypatch, capsys, "status", "--current", current)
    assert payload["heads"] == ["0003"]
    assert payload["current"] == (current or None)
    assert payload["known"] is known
    assert [p["revision"] for p in payload["pending"]] == pending
    assert all(p["message"] == f"Step {p['revision']}." for p in payload["pending"])


def test_status_says_which_pending_revision_can_be_undone(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    payload = runner(monkeypatch, capsys, "status")
    assert [(p["revision"], p["has_downgrade"]) for p in payload["pending"]] == [
        ("0001", True), ("0002", True), ("0003", False)]


def test_status_changes_nothing(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    runner(monkeypatch, capsys, "status", "--current", "0001")
    assert not (tmp_path / "app.db").exists(), "status opened the database"


def test_status_of_a_release_with_two_heads_reports_them_whatever_the_current_revision(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The database was deployed at 0002a; the next release brings 0002b, branched from 0001 too. The
    orchestrator refuses two heads by name ("merge the heads"), if status tells it there are two."""
    tree = alembic_project(tmp_path / "app", {
        "0001": (None, create("a"), drop("a")),
        "0002a": ("0001", create("b"), drop("b")),
        "0002b": ("0001", create("c"), drop("c")),
    })
    monkeypatch.setenv(URL_VARIABLE, f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.chdir(tree)
    payload = runner(monkeypatch, capsys, "status", "--current", "0002a")
    assert sorted(payload["heads"]) == ["0002a", "0002b"]


# --- upgrade, downgrade, rehearse ---------------------------------------------------------------------------


def test_upgrade_to_a_revision_then_to_the_head(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "app.db"
    payload = runner(monkeypatch, capsys, "upgrade", "--to", "0002")
    assert payload["heads"] == ["0003"] and payload["seconds"] >= 0
    assert revision_and_tables(database) == (["0002"], ["applications", "jobs"])
    runner(monkeypatch, capsys, "upgrade")  # --to defaults to the heads
    assert revision_and_tables(database) == (["0003"], ["applications", "documents", "jobs"])


def test_downgrade_to_a_revision_and_to_base(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "app.db"
    runner(monkeypatch, capsys, "upgrade", "--to", "0002")
    runner(monkeypatch, capsys, "downgrade", "--to", "0001")
    assert revision_and_tables(database) == (["0001"], ["jobs"])
    runner(monkeypatch, capsys, "downgrade", "--to", "base")
    assert revision_and_tables(database) == ([], [])


def trailed(table: str, revision: str) -> str:
    """A downgrade that drops `table` and leaves a trace of having run in a table no revision owns."""
    return (f'def downgrade():\n    op.execute("DROP TABLE {table}")\n'
            '    op.execute("CREATE TABLE IF NOT EXISTS trail (step TEXT)")\n'
            f'    op.execute("INSERT INTO trail VALUES (\'down {revision}\')")\n')


@pytest.fixture
def rehearsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tree = alembic_project(tmp_path / "app", {
        "0001": (None, create("jobs"), trailed("jobs", "0001")),
        "0002": ("0001", create("applications"), trailed("applications", "0002")),
    })
    monkeypatch.setenv(URL_VARIABLE, f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.chdir(tree)
    return tmp_path / "app.db"


def trail(database: Path) -> list[str]:
    with sqlite3.connect(database) as conn:
        steps = [r[0] for r in conn.execute("SELECT step FROM trail")]
    conn.close()
    return steps


def test_rehearse_goes_up_down_and_up_again_naming_each_step(
        rehearsed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    runner(monkeypatch, capsys, "upgrade", "--to", "0001")
    monkeypatch.setattr(sys, "argv", ["migration_runner.py", "rehearse", "--to", "0002", "--back", "0001"])
    assert migration_runner.main() == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith("migration-runner: ")] == [
        "migration-runner: upgrade", "migration-runner: downgrade", "migration-runner: upgrade"]
    assert json.loads(out.strip().splitlines()[-1])["heads"] == ["0002"]
    assert trail(rehearsed) == ["down 0002"]
    assert revision_and_tables(rehearsed) == (["0002"], ["applications", "jobs", "trail"])


def test_rehearse_goes_back_to_base_unless_told_otherwise(
        rehearsed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    runner(monkeypatch, capsys, "rehearse")
    assert trail(rehearsed) == ["down 0002", "down 0001"]
    assert revision_and_tables(rehearsed) == (["0002"], ["applications", "jobs", "trail"])


def test_rehearse_times_each_revision_of_the_first_upgrade(
        rehearsed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    result = runner(monkeypatch, capsys, "rehearse", "--revisions", "0001,0002")
    windows = result["windows"]
    assert [w["revision"] for w in windows] == ["0001", "0002"]
    assert all(w["started"] <= w["ended"] for w in windows) and windows[0]["ended"] <= windows[1]["started"]
    assert trail(rehearsed) == ["down 0002", "down 0001"], "then down and up again, as before"


def test_rehearse_once_only_upgrades(
        rehearsed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    runner(monkeypatch, capsys, "rehearse", "--revisions", "0001,0002", "--once")
    assert not trail_exists(rehearsed)
    assert revision_and_tables(rehearsed)[0] == ["0002"]


def trail_exists(database: Path) -> bool:
    with sqlite3.connect(database) as conn:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'trail'").fetchone() is not None
    conn.close()
    return found


def test_render_writes_each_revisions_sql_without_touching_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    alembic_project(tmp_path / "app", {
        "0001": (None, create("jobs"), drop("jobs")),
        "0002": ("0001", 'op.execute("ALTER TABLE jobs ADD COLUMN url TEXT")', drop("x")),
        "0003": ("0002", "op.get_bind().exec_driver_sql('SELECT 1')", drop("y")),
    })
    # A PostgreSQL URL nothing listens on: offline mode only takes its dialect.
    monkeypatch.setenv(URL_VARIABLE, "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.chdir(tmp_path / "app")
    result = runner(monkeypatch, capsys, "render", "--revisions", "0002,0003")
    assert "ALTER TABLE jobs ADD COLUMN url TEXT;" in result["sql"]["0002"]
    assert "0001" not in result["sql"], "only the revisions asked for"
    assert list(result["errors"]) == ["0003"], "an upgrade that needs a connection cannot be written out"


# --- run as the orchestrator runs it ------------------------------------------------------------------------


def test_run_through_dash_c_it_prints_one_json_object_on_its_last_line(project: Path) -> None:
    done = in_app(project, "status", "--current", "0001")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "heads": ["0003"], "current": "0001", "known": True,
        "pending": [{"revision": "0002", "message": "Step 0002.", "has_downgrade": True},
                    {"revision": "0003", "message": "Step 0003.", "has_downgrade": False}]}


def test_a_failing_migration_exits_non_zero_with_its_exception_last_and_keeps_what_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = alembic_project(tmp_path / "app", {
        "0001": (None, create("jobs"), drop("jobs")),
        "0002": ("0001", "raise RuntimeError('jobs.company has NULLs; backfill first')", drop("x")),
    })
    monkeypatch.setenv(URL_VARIABLE, f"sqlite:///{tmp_path / 'app.db'}")
    done = in_app(tree, "upgrade")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "RuntimeError: jobs.company has NULLs; backfill first"
    assert "{" not in done.stdout, "a failed run printed a result"
    # One transaction per migration: 0001 committed before 0002 failed.
    assert revision_and_tables(tmp_path / "app.db") == (["0001"], ["jobs"])


def test_a_rehearsal_that_fails_going_down_names_the_downgrade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = alembic_project(tmp_path / "app", {
        "0001": (None, create("jobs"), "def downgrade():\n    raise RuntimeError('cannot drop jobs')\n"),
    })
    monkeypatch.setenv(URL_VARIABLE, f"sqlite:///{tmp_path / 'app.db'}")
    done = in_app(tree, "rehearse")
    assert done.returncode != 0
    markers = [line for line in done.stderr.splitlines() if line.startswith("migration-runner: ")]
    assert markers == ["migration-runner: upgrade", "migration-runner: downgrade"]
    assert done.stderr.strip().splitlines()[-1] == "RuntimeError: cannot drop jobs"


def test_an_unknown_command_is_refused_by_its_arguments(project: Path) -> None:
    done = in_app(project, "stamp")
    assert done.returncode == 2
    assert "invalid choice: 'stamp'" in done.stderr


# --- its pure parts -----------------------------------------------------------------------------------------


DOWNGRADES = [
    pytest.param(drop("a"), True, id="a downgrade that drops a table can undo"),
    pytest.param('def downgrade():\n    """Drop a."""\n    op.execute("DROP TABLE a")\n', True,
                 id="a documented downgrade with a statement can undo"),
    pytest.param("def downgrade():\n    pass\n", False, id="a downgrade that only passes cannot"),
    pytest.param("def downgrade():\n    ...\n", False, id="a downgrade that is only an ellipsis cannot"),
    pytest.param('def downgrade():\n    """Irreversible."""\n', False,
                 id="a downgrade that is only a docstring cannot"),
    pytest.param("def downgrade():\n    raise NotImplementedError('one way')\n", False,
                 id="a downgrade that only raises cannot"),
    pytest.param('def downgrade():\n    """One way."""\n    pass\n    raise NotImplementedError\n', False,
                 id="a downgrade of a docstring, a pass and a raise cannot"),
    pytest.param("# no downgrade\n", False, id="a revision without a downgrade cannot"),
    pytest.param("def downgrade_data():\n    pass\n", False,
                 id="a function merely named like it does not count"),
    pytest.param("def downgrade():\n    return\n", False, id="a downgrade that only returns cannot"),
]


@pytest.mark.parametrize(("source", "expected"), DOWNGRADES)
def test_which_downgrades_can_undo(tmp_path: Path, source: str, expected: bool) -> None:
    path = tmp_path / "0001_step.py"
    path.write_text(f'"""Step."""\n\nrevision = "0001"\n\n\ndef upgrade():\n    {create("a")}\n\n\n{source}')
    assert migration_runner._has_downgrade(SimpleNamespace(path=str(path))) is expected


def test_a_revision_without_a_file_has_no_downgrade() -> None:
    assert migration_runner._has_downgrade(SimpleNamespace(path=None)) is False
    assert migration_runner._has_downgrade(object()) is False


def test_the_result_starts_a_line_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    print("alembic said something without a newline", end="")
    migration_runner._emit({"heads": ["0003"], "seconds": 0.5})
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"heads": ["0003"], "seconds": 0.5}


def test_it_imports_only_the_standard_library_and_alembic() -> None:
    """It runs in the app's interpreter, where nothing of the orchestrator is installed."""
    tree = ast.parse(RUNNER.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {str(node.module).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules - {"alembic"} <= set(sys.stdlib_module_names) | {"__future__"}, modules
