"""Migration safety before approval: each pending revision's SQL written out by Alembic in the app's
interpreter, classified (expand / contract / destructive) and linted by the real squawk; each revision's
strongest lock measured while the rehearsal migrates a real copy of the database; the policy and the lock
budget turning findings into failed prerequisites that name the revision, and the live database untouched."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from deployments.config import EnvironmentConfig, LintAllowance, MigrationSafetyConfig
from deployments.errors import PreflightError
from deployments.secrets import resolve_app_environment
from tasks import migration_runner
from tasks.lock_sampling import HeldLock, RevisionMeasure
from tasks.migration_lint import LintReport, RevisionLint, classify, lint_migrations, squawk_program, statements
from tasks.migrations import Rehearsal, check_migrations, database_revision, upgrade
from tasks.migrations import test_migrations as rehearse
from tests.alembic_projects import alembic_project, env_py
from tests.tasks.test_approvals import brief
from tests.tasks.test_migrations import environment

VARIABLE = "JOBAPP_DATABASE_URL"  # the variable production.toml gives the app its URL in
ENV_PY = env_py(VARIABLE)
NO_DOWNGRADE = "def downgrade():\n    pass\n"


def sa(body: str) -> str:
    return f"import sqlalchemy as sa; {body}"


def rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], body: str,
             url: str = "postgresql://nobody@127.0.0.1:1/none") -> list[str]:
    """Revision 0002's statements, written out by the runner for `url`'s dialect (nothing connects)."""
    tree = alembic_project(tmp_path / "app", {
        "0001": (None, 'op.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, url TEXT, title TEXT)")', NO_DOWNGRADE),
        "0002": ("0001", body, NO_DOWNGRADE)}, ENV_PY)
    monkeypatch.setenv(VARIABLE, url)
    monkeypatch.chdir(tree)
    monkeypatch.setattr(sys, "argv", ["migration_runner.py", "render", "--revisions", "0002"])
    capsys.readouterr()
    assert migration_runner.main() == 0
    import json
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not payload["errors"], payload["errors"]
    return statements(payload["sql"]["0002"])


KINDS = [
    pytest.param(sa('op.create_table("tags", sa.Column("id", sa.Integer(), primary_key=True))'), "expand", [],
                 id="a new table expands"),
    pytest.param(sa('op.add_column("jobs", sa.Column("salary", sa.Integer(), nullable=True))'), "expand", [],
                 id="a nullable column expands"),
    pytest.param(sa('op.add_column("jobs", sa.Column("n", sa.Integer(), nullable=False, server_default="0"))'),
                 "expand", [], id="a required column with a default expands"),
    pytest.param('op.create_index("ix_jobs_url", "jobs", ["url"])', "expand", [], id="an index expands"),
    pytest.param('op.drop_index("ix_jobs_title", table_name="jobs")', "expand", ["drops an index"],
                 id="a dropped index expands"),
    pytest.param('op.execute("UPDATE jobs SET url = lower(url)")', "expand", ["rewrites rows of jobs"],
                 id="a backfill rewrites rows and expands"),
    pytest.param(sa('op.add_column("jobs", sa.Column("n", sa.Integer(), nullable=False))'), "contract",
                 ["adds required column jobs.n (no default)"], id="a required column without a default contracts"),
    pytest.param('op.create_index("ux_jobs_url", "jobs", ["url"], unique=True)', "contract",
                 ["adds a unique index on jobs"], id="a unique index contracts"),
    pytest.param(sa('op.alter_column("jobs", "title", type_=sa.String(40))'), "contract",
                 ["changes the type of jobs.title"], id="a changed type contracts"),
    pytest.param('op.alter_column("jobs", "title", nullable=False)', "contract", ["makes jobs.title required"],
                 id="a column made required contracts"),
    pytest.param('op.alter_column("jobs", "title", new_column_name="name")', "contract", ["renames jobs.title"],
                 id="a renamed column contracts"),
    pytest.param('op.drop_column("jobs", "url")', "destructive", ["drops column jobs.url"],
                 id="a dropped column is destructive"),
    pytest.param('op.drop_table("jobs")', "destructive", ["drops table jobs"], id="a dropped table is destructive"),
    pytest.param('op.execute("DELETE FROM jobs WHERE url IS NULL")', "destructive", ["deletes rows of jobs"],
                 id="deleted rows are destructive"),
]


@pytest.mark.parametrize(("body", "kind", "why"), KINDS)
def test_what_a_revision_is_from_the_sql_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], body: str, kind: str,
                                                 why: list[str]) -> None:
    assert classify(rendered(tmp_path, monkeypatch, capsys, body)) == (kind, why)


def test_on_sqlite_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    body = 'op.drop_column("jobs", "url")'
    sql = rendered(tmp_path, monkeypatch, capsys, body, url=f"sqlite:///{tmp_path / 'none.db'}")
    assert classify(sql) == ("destructive", ["drops column jobs.url"])


def test_a_batch_rebuild_of_a_table_is_not_a_drop() -> None:
    sql = ["CREATE TABLE _alembic_tmp_jobs (id INTEGER NOT NULL, url TEXT)",
           "INSERT INTO _alembic_tmp_jobs (id, url) SELECT id, url FROM jobs", "DROP TABLE jobs",
           "ALTER TABLE _alembic_tmp_jobs RENAME TO jobs"]
    assert classify(sql) == ("contract", ["rebuilds table jobs"])


def test_the_bookkeeping_and_the_transaction_are_not_statements_of_the_revision() -> None:
    script = ("BEGIN;\n\n-- Running upgrade 0001 -> 0002\n\nALTER TABLE jobs ADD COLUMN n INTEGER;\n\n"
              "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';\n\nCOMMIT;\n")
    assert statements(script) == ["ALTER TABLE jobs ADD COLUMN n INTEGER"]


# --- the step, on real databases ---------------------------------------------------------------------------


def tree_with(tmp_path: Path, upgrade_0002: str, downgrade_0002: str = NO_DOWNGRADE) -> Path:
    return alembic_project(tmp_path / "app", {
        "0001": (None, 'op.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT, note TEXT)")\n'
                       '    op.execute("INSERT INTO accounts (id, email) VALUES (1, \'a@example.com\'), '
                       '(2, \'b@example.com\'), (3, NULL)")', NO_DOWNGRADE),
        "0002": ("0001", upgrade_0002, downgrade_0002)}, ENV_PY)


def configured(tmp_path: Path, url: str, tree: Path, **policy: Any) -> EnvironmentConfig:
    config = environment(tmp_path, url, tree)
    upgrade(config, resolve_app_environment(config), tree, "deploy-test", to="0001")
    return config.model_copy(update={"migrations": MigrationSafetyConfig(**policy)})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'live.db'}"
    return str(request.getfixturevalue("postgres_database"))


def test_squawk_is_installed_with_the_tool() -> None:
    assert squawk_program("squawk") is not None


@pytest.mark.postgres
def test_a_locking_migration_is_caught_by_the_lint_and_the_policy_blocks_it(tmp_path: Path,
                                                                           postgres_database: str) -> None:
    tree = tree_with(tmp_path, 'op.create_index("ix_accounts_email", "accounts", ["email"])')
    config = configured(tmp_path, postgres_database, tree, block=["require-concurrent-index-creation"])
    with pytest.raises(PreflightError) as caught:
        lint_migrations.fn(config, tree, check_migrations.fn(config, tree))
    cause = caught.value.cause
    assert cause.startswith("revision 0002: require-concurrent-index-creation (") and \
        "`CREATE INDEX ix_accounts_email ON accounts (email)`" in cause, cause
    assert '[[migrations.allow]] entry (revision = "0002", rule = "require-concurrent-index-creation"' in \
        caught.value.action and "production was not changed" in caught.value.action
    assert database_revision(postgres_database) == "0001"


@pytest.mark.postgres
def test_an_allowed_finding_passes_with_its_reason_and_the_others_warn(tmp_path: Path, postgres_database: str) -> None:
    tree = tree_with(tmp_path, sa('op.create_index("ix_accounts_email", "accounts", ["email"])\n'
                                  '    op.add_column("accounts", sa.Column("plan", sa.Text(), nullable=False))'))
    reason = "accounts holds 3 rows; the index builds in milliseconds"
    config = configured(tmp_path, postgres_database, tree, block=["require-concurrent-index-creation"],
                        allow=[LintAllowance(revision="0002", rule="require-concurrent-index-creation", reason=reason)])
    report = lint_migrations.fn(config, tree, check_migrations.fn(config, tree))
    [revision] = report.revisions
    assert (revision.kind, revision.why) == ("contract", ["adds required column accounts.plan (no default)"])
    verdicts = {f.rule: (f.verdict, f.reason) for f in revision.findings}
    assert verdicts["require-concurrent-index-creation"] == ("allowed", reason)
    assert verdicts["adding-required-field"] == ("warns", "")
    assert "require-lock-timeout" not in verdicts and "require-statement-timeout" not in verdicts, \
        "the orchestrator sets both timeouts for the migration session"
    assert "prefer-text-field" not in verdicts and "prefer-bigint-over-int" not in verdicts, "style rules are ignored"
    assert report.linter.startswith("squawk 2.") and report.linter.endswith("on PostgreSQL")


def test_a_destructive_revision_is_flagged(tmp_path: Path, url: str) -> None:
    tree = tree_with(tmp_path, 'op.drop_column("accounts", "note")')
    config = configured(tmp_path, url, tree)
    report = lint_migrations.fn(config, tree, check_migrations.fn(config, tree))
    [revision] = report.revisions
    assert (revision.kind, revision.why) == ("destructive", ["drops column accounts.note"])
    assert [f.rule for f in revision.findings] == ["ban-drop-column"]
    assert revision.findings[0].verdict == "warns"
    assert database_revision(url) == "0001"


def test_a_misspelt_rule_is_refused_before_anything_is_linted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    tree = tree_with(tmp_path, 'op.drop_column("accounts", "note")')
    config = configured(tmp_path, url, tree, block=["ban-drop-colum"])
    with pytest.raises(PreflightError) as caught:
        lint_migrations.fn(config, tree, check_migrations.fn(config, tree))
    assert caught.value.cause == "[migrations] names ban-drop-colum, which squawk does not know"


def test_a_revision_that_reads_the_database_cannot_be_written_out_and_counts_as_contract(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    tree = tree_with(tmp_path, 'op.get_bind().exec_driver_sql("UPDATE accounts SET note = email")')
    config = configured(tmp_path, url, tree)
    [revision] = lint_migrations.fn(config, tree, check_migrations.fn(config, tree)).revisions
    assert revision.kind == "contract" and not revision.rendered
    assert revision.note.startswith("its upgrade reads the database, which offline mode cannot do (AttributeError: "
                                    "'MockConnection'"), revision.note


@pytest.mark.postgres
def test_the_rehearsal_measures_the_strongest_lock_and_the_budget_fails_it(tmp_path: Path,
                                                                         postgres_database: str) -> None:
    slow = ('op.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")\n'
            '    op.execute("SELECT pg_sleep(0.6)")\n    op.execute("ALTER TABLE accounts ADD COLUMN plan TEXT")')
    tree = tree_with(tmp_path, slow, 'def downgrade():\n    op.execute("ALTER TABLE accounts DROP COLUMN plan")\n')
    config = configured(tmp_path, postgres_database, tree)
    summary = rehearse.fn(config, tree, tmp_path / "rehearsal", check_migrations.fn(config, tree))
    [measured] = summary.measures
    assert measured.lock is not None and (measured.lock.table, measured.lock.mode) == ("accounts", "AccessExclusiveLock")
    assert 0.4 <= measured.lock.seconds <= measured.seconds and measured.lock.rows == 3
    assert "0002: ACCESS EXCLUSIVE on accounts for 0." in summary.describe()

    budgeted = config.model_copy(update={"migrations": MigrationSafetyConfig(max_lock_seconds=0.2)})
    with pytest.raises(PreflightError) as caught:
        rehearse.fn(budgeted, tree, tmp_path / "rehearsal", check_migrations.fn(budgeted, tree))
    cause = caught.value.cause
    assert cause.startswith("revision 0002 held ACCESS EXCLUSIVE on accounts for 0.") and \
        cause.endswith("over migrations.max_lock_seconds = 0.2"), cause
    assert "production was not touched" in caught.value.action
    engine = create_engine(postgres_database, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' "
                                 "AND column_name = 'plan'")).scalar_one() == 0, "the live database is untouched"
    engine.dispose()


@pytest.mark.postgres
def test_the_rehearsal_says_which_revision_rewrote_a_table(tmp_path: Path, postgres_database: str) -> None:
    tree = alembic_project(tmp_path / "app", {
        "0001": (None, 'op.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email VARCHAR(40))")\n'
                       '    op.execute("INSERT INTO accounts SELECT g, \'a\' || g FROM generate_series(1, 500) g")',
                 NO_DOWNGRADE),
        "0002": ("0001", 'op.execute("CREATE INDEX ix_accounts_email ON accounts (email)")',
                 'def downgrade():\n    op.execute("DROP INDEX ix_accounts_email")\n'),
        "0003": ("0002", 'op.execute("SELECT pg_sleep(0.3)")\n    op.execute("ALTER TABLE accounts ALTER COLUMN id TYPE BIGINT")',
                 'def downgrade():\n    op.execute("ALTER TABLE accounts ALTER COLUMN id TYPE INTEGER")\n'),
        "0004": ("0003", 'op.execute("SELECT pg_sleep(0.5)")\n    op.execute("ALTER TABLE accounts ADD COLUMN note TEXT")',
                 'def downgrade():\n    op.execute("ALTER TABLE accounts DROP COLUMN note")\n'),
    }, ENV_PY)
    # 0003 and 0004 take long enough (pg_sleep) that a sample falls between their commits, however loaded
    # the machine: a revision too short to tell from its neighbour is not claimed.
    config = configured(tmp_path, postgres_database, tree)
    summary = rehearse.fn(config, tree, tmp_path / "rehearsal", check_migrations.fn(config, tree))
    rewrote = {m.revision: m.rewrote for m in summary.measures}
    # 0003's rewrite is a new file for accounts; 0004's nullable column and 0002's index leave it as it is
    # (the rehearsal's downgrade of 0003, which rewrites it again, comes after and is not counted).
    assert rewrote == {"0002": (), "0003": ("accounts",), "0004": ()}, summary.describe()


def test_on_sqlite_the_budget_is_the_database_write_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    slow = 'op.execute("ALTER TABLE accounts ADD COLUMN plan TEXT"); __import__("time").sleep(0.5)'
    tree = tree_with(tmp_path, slow)
    config = configured(tmp_path, url, tree, max_lock_seconds=0.2)
    with pytest.raises(PreflightError) as caught:
        rehearse.fn(config, tree, tmp_path / "rehearsal", check_migrations.fn(config, tree))
    assert caught.value.cause.startswith("revision 0002 held the database's write lock for 0."), caught.value.cause
    assert database_revision(url) == "0001"


def test_a_lock_too_short_to_sample_is_said_so_not_called_lock_free() -> None:
    assert RevisionMeasure("0002", 0.004, None).describe() == (
        "0002: 0.00 s, no lock on an existing table seen (sampled every 20 ms)")


# --- what the approvers read -------------------------------------------------------------------------------


def test_the_form_shows_kind_findings_measured_locks_and_the_rollback_path_per_revision() -> None:
    from tasks.migration_lint import Finding
    from tasks.migrations import PendingRevision

    lint = LintReport([
        RevisionLint("0002", "expand", [], [Finding("require-concurrent-index-creation", "blocks writes",
                                                     "CREATE INDEX ix_jobs_company ON jobs (company)", "allowed",
                                                     "jobs is small")]),
        RevisionLint("0003", "destructive", ["drops column jobs.url"],
                     [Finding("ban-drop-column", "may break clients", "ALTER TABLE jobs DROP COLUMN url", "warns")]),
    ], "squawk 2.70.0 on PostgreSQL")
    rehearsal = Rehearsal("upgrade passed", [
        RevisionMeasure("0002", 0.4, HeldLock("jobs", "ShareLock", 0.31, 821)),
        RevisionMeasure("0003", 2.4, HeldLock("jobs", "AccessExclusiveLock", 2.3, 821), ("jobs",))])
    text_ = brief(migrations=[PendingRevision("0002", "Company index", True),
                              PendingRevision("0003", "Drop url", False)], lint=lint, rehearsal=rehearsal).markdown()
    assert "2 migrations to run, from revision `0001` (linted by squawk 2.70.0 on PostgreSQL):" in text_
    assert "- `0002` Company index: expand; rollback: downgrade\n" in text_
    assert "  - on a copy of production: SHARE on jobs for 0.31 s (821 rows), 0.40 s in all\n" in text_
    assert "  - require-concurrent-index-creation allowed (jobs is small): `CREATE INDEX" in text_
    assert ("- `0003` Drop url: **destructive** (drops column jobs.url): drops data: the old code that still reads it "
            "fails until the reload, and a downgrade cannot bring it back (only the backup can); rollback: "
            "**restore the backup** (no downgrade)") in text_
    assert "  - on a copy of production: ACCESS EXCLUSIVE on jobs for 2.30 s (821 rows), **rewrote** jobs, 2.40 s in all" \
        in text_
    assert "  - ban-drop-column warns: `ALTER TABLE jobs DROP COLUMN url`" in text_
