"""lint-migrations: what each pending migration does, read from the SQL it runs, before anyone approves it.

Each pending revision is written out as SQL by Alembic's offline mode, in the app's own interpreter and
through the app's own `env.py` (the runner's `render`; nothing connects). From that SQL:

- **its kind**: expand (it only adds: the code still running works on the schema after it), contract
  (the old code may fail on it: a column it never writes becomes required, a type or a name changes,
  a constraint or a unique index is added) or destructive (data goes: a table or a column dropped,
  rows deleted). The old code keeps running on the new schema until the reload, and again through a
  rollback by code, so a contract or destructive revision is said so to the approvers. A revision that
  cannot be written out (its upgrade reads the database) counts as contract, and says why.
- **squawk's findings**, the PostgreSQL migration linter: operations that take strong locks, rewrite
  tables or break running code. [migrations] says which rules block, which are not reported, and which
  findings are accepted for one revision (with the reason approvers read). The migration session's
  lock_timeout and statement_timeout are set by the orchestrator (PGOPTIONS), so the SQL is linted with
  them. On SQLite only the rules about what breaks running code apply, and the one on index builds (which
  hold the whole database's write lock there); the rehearsal measures how long.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Mapping

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from deployments.config import EnvironmentConfig
from deployments.errors import PreflightError
from deployments.secrets import redact, resolve_app_environment, resolve_database_url
from tasks.databases import connect, session_name
from tasks.migrations import MigrationStatus, run_runner
from tasks.processes import Advice, Command, child_env, run
from tasks.steps import read_step

Kind = Literal["expand", "contract", "destructive"]
RANK: dict[str, int] = {"expand": 0, "contract": 1, "destructive": 2}
STEP = "lint migrations"

# What each kind means to the people approving it, in one line.
MEANING: dict[str, str] = {
    "expand": "only adds: the code still running works on the new schema",
    "contract": "the old code keeps running on the new schema until the reload (and through a rollback) and "
                "may fail on it",
    "destructive": "drops data: the old code that still reads it fails until the reload, and a downgrade cannot "
                   "bring it back (only the backup can)",
}

# squawk's rules that say something on SQLite too: what breaks the code still running, and an index
# build, which holds the database's write lock throughout (SQLite has no CONCURRENTLY to offer instead).
SQLITE_RULES = frozenset({"ban-drop-column", "ban-drop-table", "adding-required-field", "adding-not-nullable-field",
                          "changing-column-type", "renaming-column", "renaming-table", "ban-drop-database",
                          "ban-truncate-cascade", "require-concurrent-index-creation"})
SQLITE_MESSAGES = {"require-concurrent-index-creation": "building the index holds the database's write lock: "
                                                        "writes wait until it is built (SQLite cannot build it "
                                                        "concurrently)"}


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    statement: str  # the statement it is about, on one line
    verdict: Literal["blocks", "warns", "allowed"]
    reason: str = ""  # an allowed finding: why, from [[migrations.allow]]

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.rule} {self.verdict}{why}: {_clip(self.statement, 100)}"


@dataclass(frozen=True)
class RevisionLint:
    revision: str
    kind: Kind
    why: list[str]  # what made it that kind, e.g. "drops column jobs.url"
    findings: list[Finding] = field(default_factory=list)
    rendered: bool = True
    note: str = ""  # a revision not written out: why

    def describe(self) -> str:
        what = f"{self.kind} ({'; '.join(self.why)})" if self.why else self.kind
        found = f"; {len(self.findings)} finding(s): " + "; ".join(f.describe() for f in self.findings) if self.findings else ""
        return f"{self.revision}: {what}{found}"


@dataclass(frozen=True)
class LintReport:
    revisions: list[RevisionLint]
    linter: str  # what checked the SQL: "squawk 2.70.0", or why nothing did

    def describe(self) -> str:
        if not self.revisions:
            return "No pending migrations; nothing to lint"
        return f"{self.linter}. " + " · ".join(r.describe() for r in self.revisions)

    def of(self, revision: str) -> RevisionLint | None:
        return next((r for r in self.revisions if r.revision == revision), None)

    def blocking(self) -> list[tuple[str, Finding]]:
        return [(r.revision, f) for r in self.revisions for f in r.findings if f.verdict == "blocks"]


# ---------------------------------------------------------------------------------------------------
# The SQL, statement by statement


@dataclass(frozen=True)
class Statement:
    sql: str  # as written, without its semicolon
    line: int  # its first line in the text squawk reads (0-based, as squawk reports)

    @property
    def flat(self) -> str:
        return " ".join(self.sql.split())


def statements(sql: str) -> list[str]:
    """The statements of an offline migration script that change the schema or the data: comments, the
    transaction's BEGIN/COMMIT and the version table's bookkeeping left out."""
    found = []
    for chunk in re.split(r";[ \t]*(?:\n|$)", sql):
        lines = [line for line in chunk.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        body = "\n".join(lines).strip()
        if not body or re.fullmatch(r"(?i)(BEGIN|COMMIT|START TRANSACTION)", body) or "alembic_version" in body:
            continue
        found.append(body)
    return found


_IDENT = r'"?([\w.]+)"?'


def classify(sql_statements: list[str]) -> tuple[Kind, list[str]]:
    """The revision's kind and the statements' effects that made it so."""
    effects: list[tuple[Kind, str]] = []
    for i, sql in enumerate(sql_statements):
        flat = " ".join(sql.split())
        upper = flat.upper()
        table = re.match(rf"(?i)^ALTER TABLE (?:ONLY )?(?:IF EXISTS )?{_IDENT}", flat)
        name = table.group(1) if table else "?"
        if re.match(r"(?i)^DROP TABLE", flat):
            dropped = re.match(rf"(?i)^DROP TABLE (?:IF EXISTS )?{_IDENT}", flat)
            target = dropped.group(1) if dropped else "?"
            # SQLite's batch mode rebuilds a table: a copy, the original dropped, the copy renamed to it.
            rebuilt = any(re.search(rf"(?i)RENAME TO \"?{re.escape(target)}\"?$", " ".join(later.split()))
                          for later in sql_statements[i + 1:])
            effects.append(("contract", f"rebuilds table {target}") if rebuilt else ("destructive", f"drops table {target}"))
        elif re.match(r"(?i)^(TRUNCATE|DELETE FROM)", flat):
            effects.append(("destructive", "deletes rows" + _of_table(flat)))
        elif table:
            for clause in _clauses(flat[table.end():]):
                effects.append(_alter_effect(name, clause))
        elif re.match(r"(?i)^CREATE UNIQUE INDEX", flat):
            effects.append(("contract", "adds a unique index" + _on_table(flat)))
        elif re.match(r"(?i)^(CREATE|INSERT|UPDATE|COMMENT|GRANT|SELECT|SET|ANALYZE)\b", flat):
            if upper.startswith("UPDATE"):
                effects.append(("expand", "rewrites rows" + _of_table(flat)))
        elif re.match(r"(?i)^DROP INDEX", flat):
            effects.append(("expand", "drops an index"))
        elif re.match(r"(?i)^DROP (SCHEMA|TYPE|DATABASE)", flat):
            effects.append(("destructive", flat[:60]))
        else:  # anything else that changes the schema: the old code may depend on it
            effects.append(("contract", _clip(flat, 60)))
    if not effects:
        return "expand", []
    kind = max((k for k, _ in effects), key=RANK.__getitem__)
    return kind, list(dict.fromkeys(why for k, why in effects if k == kind and why))[:4]


def _clauses(rest: str) -> list[str]:
    """An ALTER TABLE's comma-separated actions (commas inside parentheses belong to their action)."""
    parts, depth, current = [], 0, ""
    for char in rest:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


def _alter_effect(table: str, clause: str) -> tuple[Kind, str]:
    upper = clause.upper()
    column = re.match(rf"(?i)^(?:ADD|DROP|ALTER|RENAME)(?: COLUMN)?(?: IF (?:NOT )?EXISTS)? {_IDENT}", clause)
    col = f"{table}.{column.group(1)}" if column else table
    if upper.startswith("DROP CONSTRAINT") or upper.startswith("DROP DEFAULT"):
        return "expand", ""
    if upper.startswith("DROP"):
        return "destructive", f"drops column {col}"
    if upper.startswith("ADD CONSTRAINT") or upper.startswith(("ADD UNIQUE", "ADD CHECK", "ADD FOREIGN", "ADD PRIMARY")):
        return "contract", f"adds a constraint on {table}"
    if upper.startswith("ADD"):
        required = " NOT NULL" in upper and " DEFAULT " not in upper
        return ("contract", f"adds required column {col} (no default)") if required else ("expand", "")
    if upper.startswith("RENAME TO"):  # the table itself; a batch rebuild's copy taking the original's name is not
        return ("expand", "") if table.startswith("_alembic_tmp_") else ("contract", f"renames table {table}")
    if upper.startswith("RENAME"):
        return "contract", f"renames {col}"
    if upper.startswith("ALTER"):
        if " DROP NOT NULL" in upper or " DROP DEFAULT" in upper or " SET DEFAULT" in upper:
            return "expand", ""
        if " TYPE " in f"{upper} ":
            return "contract", f"changes the type of {col}"
        if " SET NOT NULL" in upper:
            return "contract", f"makes {col} required"
    return "contract", f"alters {table}: {_clip(clause, 50)}"


def _of_table(flat: str) -> str:
    found = re.match(rf"(?i)^(?:TRUNCATE(?: TABLE)?|DELETE FROM|UPDATE) {_IDENT}", flat)
    return f" of {found.group(1)}" if found else ""


def _on_table(flat: str) -> str:
    found = re.search(rf"(?i) ON (?:ONLY )?{_IDENT}", flat)
    return f" on {found.group(1)}" if found else ""


# ---------------------------------------------------------------------------------------------------
# squawk


def squawk_program(configured: str) -> str | None:
    """The squawk the configuration names: a path, a name on PATH, or the one installed beside this tool."""
    if "/" in configured:
        return configured if Path(configured).is_file() else None
    beside = Path(sys.executable).parent / configured
    return str(beside) if beside.is_file() else shutil.which(configured)


def squawk_version(program: str) -> str:
    result = run(Command.of([program, "--version"], env=child_env({}), timeout=30, name="squawk"), step=STEP,
                 error=PreflightError, advice=_ADVICE)
    return result.stdout.strip() or "squawk"


def unknown_rules(config: EnvironmentConfig, program: str) -> None:
    """Every rule the policy names must be one of squawk's: a misspelt rule in `block` would block nothing."""
    policy = config.migrations
    named = sorted({*policy.block, *policy.ignore, *(a.rule for a in policy.allow)})
    if not named:
        return
    result = run(Command.of([program, "--reporter", "json", "--stdin-filepath", "check.sql", f"--exclude={','.join(named)}"],
                            env=child_env({}), timeout=30, name="squawk"), step=STEP, error=PreflightError,
                 advice=_ADVICE, input="SELECT 1;\n")
    bad = re.findall(r"invalid rule name ([\w-]+)", result.stderr)
    if bad:
        raise PreflightError(STEP, f"[migrations] names {', '.join(bad)}, which squawk does not know",
                             f"correct the rule names in {config.name}'s file (the rules: "
                             "https://squawkhq.com/docs/rules); nothing was changed")


_ADVICE = Advice(start="install squawk-cli (it is in the tool's lock: `make install`), set migrations.squawk to "
                       "its path, or set migrations.lint = false",
                 slow="squawk should take well under a second; run it by hand on the release's SQL")


def lint_sql(program: str, revision: str, sql_statements: list[str], *, postgres: bool, pg_version: str | None,
             lock_timeout_ms: int, statement_timeout_ms: int, ignore: list[str]) -> list[tuple[str, str, str]]:
    """squawk's findings on one revision's statements: (rule, message, statement)."""
    preamble = ([f"SET lock_timeout = '{lock_timeout_ms}ms'", f"SET statement_timeout = '{statement_timeout_ms}ms'"]
                if postgres else [])
    lines: list[Statement] = []
    text_lines: list[str] = []
    for sql in [*preamble, *sql_statements]:
        lines.append(Statement(sql, len(text_lines)))
        text_lines += (sql + ";").splitlines()
    argv = [program, "--reporter", "json", "--stdin-filepath", f"{revision}.sql"]
    if ignore:
        argv.append(f"--exclude={','.join(ignore)}")
    if pg_version:
        argv += ["--pg-version", pg_version]
    result = run(Command.of(argv, env=child_env({}), timeout=60, name="squawk"), step=STEP, error=PreflightError,
                 advice=_ADVICE, input="\n".join(text_lines) + "\n")
    try:
        reported = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        raise PreflightError(STEP, f"squawk answered without its JSON report (exit {result.returncode}): "
                             f"{redact(result.error_line)}", _ADVICE.start) from None
    found = []
    for item in reported:
        at = max((s for s in lines if s.line <= int(item.get("line", 0))), key=lambda s: s.line, default=None)
        statement = at.flat if at is not None else ""
        found.append((str(item.get("rule_name")), str(item.get("message", "")), statement))
    return found


def judged(config: EnvironmentConfig, revision: str, rule: str, message: str, statement: str) -> Finding:
    policy = config.migrations
    allowance = next((a for a in policy.allow if a.revision == revision and a.rule == rule), None)
    if allowance is not None:
        return Finding(rule, message, statement, "allowed", allowance.reason)
    return Finding(rule, message, statement, "blocks" if rule in policy.block else "warns")


# ---------------------------------------------------------------------------------------------------
# The step


def render(config: EnvironmentConfig, app_env: Mapping[str, str], tree: Path, revisions: list[str]) -> dict[str, object]:
    return run_runner(config, app_env, tree, "render", "--revisions", ",".join(revisions), step=STEP)


def server_version(url: str) -> str | None:
    """The live PostgreSQL's version (squawk's advice depends on it), or None when it cannot be read."""
    try:
        engine = connect(url, session_name("lint"), read_only=True)
        try:
            with engine.connect() as conn:
                number = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        finally:
            engine.dispose()
    except (SQLAlchemyError, ValueError):
        return None
    # 150004 is 15.4; before 10, 90605 was 9.6(.5).
    return f"{number // 10000}.{number % 10000}" if number >= 100000 else f"{number // 10000}.{number % 10000 // 100}"


@read_step("lint-migrations", retries=0)
def lint_migrations(config: EnvironmentConfig, release_tree: Path, status: MigrationStatus) -> LintReport:
    """Prerequisite: each pending revision's SQL, classified and linted; a finding the policy blocks fails here."""
    pending = [p.revision for p in status.pending]
    if not pending:
        return LintReport([], "nothing to lint")
    url = resolve_database_url(config)
    postgres = make_url(url).get_backend_name() == "postgresql"
    if status.rendered is not None:  # written out by check-migrations' run of the app's interpreter
        rendered, errors = status.rendered, status.render_errors or {}
    else:
        payload = render(config, resolve_app_environment(config), release_tree, pending)
        rendered, errors = dict(payload.get("sql", {})), dict(payload.get("errors", {}))  # type: ignore[call-overload]
    program = squawk_program(config.migrations.squawk) if config.migrations.lint else None
    if config.migrations.lint and program is None:
        raise PreflightError(STEP, f"squawk ({config.migrations.squawk}) is not installed", _ADVICE.start)
    linter = (f"{squawk_version(program)} on {'PostgreSQL' if postgres else 'SQLite (rules on breaking running code only)'}"
              if program else "not linted (migrations.lint = false)")
    if program is not None:
        unknown_rules(config, program)
    version = server_version(url) if postgres and program else None
    revisions = []
    for revision in pending:
        if revision not in rendered:
            error = redact(errors.get(revision, "no SQL came out"))
            cause = ("its upgrade reads the database, which offline mode cannot do" if "Mock" in error or
                     "NoInspectionAvailable" in error else "Alembic's offline mode failed on it")
            revisions.append(RevisionLint(revision, "contract", ["its SQL could not be written out, so it is not "
                                          "known to only add"], rendered=False, note=_clip(f"{cause} ({error})", 160)))
            continue
        body = statements(rendered[revision])
        kind, why = classify(body)
        findings = []
        if program is not None and body:
            for rule, message, statement in lint_sql(program, revision, body, postgres=postgres, pg_version=version,
                                                     lock_timeout_ms=config.database.lock_timeout_ms,
                                                     statement_timeout_ms=config.database.statement_timeout_ms,
                                                     ignore=config.migrations.ignore):
                if not postgres and rule not in SQLITE_RULES:  # squawk itself left out the ignored rules
                    continue
                message = message if postgres else SQLITE_MESSAGES.get(rule, message)
                findings.append(judged(config, revision, rule, message, statement))
        revisions.append(RevisionLint(revision, kind, why, findings))
    report = LintReport(revisions, linter)
    blocking = report.blocking()
    if blocking:
        first_revision, first = blocking[0]
        more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
        raise PreflightError(STEP, f"revision {first_revision}: {first.rule} ({first.message}) in "
                             f"`{_clip(first.statement, 120)}`{more}; migrations.block lists {first.rule}",
                             f"make the migration safe, or accept it for this revision with an [[migrations.allow]] "
                             f'entry (revision = "{first_revision}", rule = "{first.rule}", reason = "...") in '
                             f"{config.name}'s file; {config.name} was not changed")
    return report


def with_kinds(status: MigrationStatus, report: LintReport | None) -> MigrationStatus:
    """The status whose pending revisions carry the kind the lint read from their SQL (and no longer
    their SQL: the status travels on as the next phase's parameter)."""
    pending = []
    for p in status.pending:
        lint = report.of(p.revision) if report is not None else None
        kind = lint.kind if lint is not None else "contract"
        findings = tuple(f"{f.rule} {f.verdict}" for f in lint.findings) if lint is not None else ()
        pending.append(replace(p, kind=kind, expand_only=kind == "expand", findings=findings))
    return replace(status, pending=pending, rendered=None, render_errors=None)


def _clip(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
