"""Releases that fail on purpose, committed into a sandbox's origin the way a team would push them.

Each starts from tag v2 (production's last good release in these stories; v3..v5 carry migrations
production cannot take) and is merged into main with `git merge -s ours`: main keeps its tree, and
the release becomes reachable from main, which the "merged to main" prerequisite asks for.
Author and committer are fixed; the date is this process's start, after the sandbox's own history
(which is dated relative to when it was built), so lead times read as a real team's would.

    MIGRATION_FAILS_MIDWAY   three migrations after 0002; the second makes jobs.source_url unique,
                             which production's duplicated URLs refuse (staging's data has none)
    EMAIL_BROKEN             one reversible migration; POST /api/email answers 500 in production only
                             (the code reads a relay variable nobody configured): health stays ok
    EMAIL_BROKEN_HOTFIX_A/B  two harmless commits on top of EMAIL_BROKEN, for two deploys at once
    HEALTH_FLAPS             no migration; in production /api/health answers 200 four times, then 503
                             (the scraper's source "expires"), whatever the machine's speed
    ONE_WAY                  one migration with no downgrade (a nullable column): undoing it means the backup
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

MIGRATION_FAILS_MIDWAY = "faults/migration-fails-midway"
EMAIL_BROKEN = "faults/email-broken"
EMAIL_BROKEN_HOTFIX_A = "faults/email-broken-hotfix-a"
EMAIL_BROKEN_HOTFIX_B = "faults/email-broken-hotfix-b"
HEALTH_FLAPS = "faults/health-flaps"
ONE_WAY = "faults/one-way"

DATE = datetime.now(timezone.utc).isoformat(timespec="seconds")


def _migration(revision: str, down: str, doc: str, upgrade: str, downgrade: str) -> str:
    return f'''"""{doc}

Revision ID: {revision}
Revises: {down}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "{revision}"
down_revision: str | None = "{down}"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


MIDWAY_MIGRATIONS = {
    "f001_source_host.py": _migration(
        "f001", "0002", "Host of each posting's source URL.",
        '    op.add_column("jobs", sa.Column("source_host", sa.String(200), nullable=True))',
        '    with op.batch_alter_table("jobs") as batch:\n        batch.drop_column("source_host")'),
    "f002_unique_source_url.py": _migration(
        "f002", "f001", "One job per source URL (fails where the data holds duplicates).",
        '    op.create_index("ux_jobs_source_url", "jobs", ["source_url"], unique=True)',
        '    op.drop_index("ux_jobs_source_url", table_name="jobs")'),
    "f003_source_checked_at.py": _migration(
        "f003", "f002", "When the source was last checked.",
        '    op.add_column("jobs", sa.Column("source_checked_at", sa.DateTime(), nullable=True))',
        '    with op.batch_alter_table("jobs") as batch:\n        batch.drop_column("source_checked_at")'),
}

ONE_WAY_MIGRATION = {
    "w001_job_notes.py": _migration(
        "w001", "0002", "Recruiters' notes on jobs (no way back but the backup).",
        '    op.add_column("jobs", sa.Column("notes", sa.Text(), nullable=True))',
        '    pass'),
}

EMAIL_MIGRATION = {
    "m001_outbox_priority.py": _migration(
        "m001", "0002", "Priority of outgoing messages.",
        '    op.add_column("outbox", sa.Column("priority", sa.Integer(), nullable=True))',
        '    with op.batch_alter_table("outbox") as batch:\n        batch.drop_column("priority")'),
}

RELAY_LOOKUP = '''

def _relay() -> str | None:
    # Production mail goes through the relay; its variable was never added to the environment file.
    if os.environ.get("JOBAPP_ENV") == "production":
        return os.environ["JOBAPP_SMTP_RELAY"]
    return None
'''


def add_fault_releases(origin: Path) -> dict[str, str]:
    """Push the releases above to `origin` (a bare repository) and merge them into main; their SHAs."""
    with tempfile.TemporaryDirectory(prefix="fault-releases-") as scratch:
        work = Path(scratch) / "work"
        _git(Path(scratch), "clone", "--quiet", str(origin), str(work))
        shas = {
            MIGRATION_FAILS_MIDWAY: _release(work, MIGRATION_FAILS_MIDWAY, "v2", _add_migrations(MIDWAY_MIGRATIONS),
                                             "Source hosts, unique source URLs, source check times"),
            EMAIL_BROKEN: _release(work, EMAIL_BROKEN, "v2", _break_email,
                                   "Outbox priorities; production mail through the relay"),
        }
        shas[HEALTH_FLAPS] = _release(work, HEALTH_FLAPS, "v2", _flap_health,
                                      "Scraper: refresh the source cache in the background")
        shas[ONE_WAY] = _release(work, ONE_WAY, "v2", _add_migrations(ONE_WAY_MIGRATION), "Notes on jobs")
        for name, line in ((EMAIL_BROKEN_HOTFIX_A, "hotfix a"), (EMAIL_BROKEN_HOTFIX_B, "hotfix b")):
            shas[name] = _release(work, name, EMAIL_BROKEN, _append_readme(line), f"README: {line}")
        _git(work, "checkout", "--quiet", "main")
        for name in shas:
            _git(work, "merge", "--quiet", "-s", "ours", "--no-edit", name)
        _git(work, "push", "--quiet", "origin", "main", *[f"{name}:refs/heads/{name}" for name in shas])
    return shas


def _release(work: Path, name: str, base: str, change, message: str) -> str:  # type: ignore[no-untyped-def]
    _git(work, "checkout", "--quiet", "-B", name, base)
    change(work)
    _git(work, "add", "--all")
    _git(work, "commit", "--quiet", "--no-verify", "--message", message)
    return _git(work, "rev-parse", "HEAD")


def _add_migrations(files: dict[str, str]):  # type: ignore[no-untyped-def]
    def change(work: Path) -> None:
        for name, text in files.items():
            (work / "migrations" / "versions" / name).write_text(text)
    return change


def _break_email(work: Path) -> None:
    _add_migrations(EMAIL_MIGRATION)(work)
    mailer = work / "jobapp" / "mailer.py"
    text = mailer.read_text()
    text = text.replace("from __future__ import annotations\n", "from __future__ import annotations\n\nimport os\n", 1)
    text = text.replace("    message = OutboxMessage(", "    _relay()\n    message = OutboxMessage(", 1)
    mailer.write_text(text + RELAY_LOOKUP)


FLAP = '''
    # The source cache expires after this release's fourth health answer (counted across the workers
    # of one master); in production nothing refreshes it.
    if os.environ.get("JOBAPP_ENV") == "production" and _answers() > 4:
        services["scraper"] = ServiceStatus("error", "RuntimeError: source cache expired", 0.0)
'''

ANSWERS = '''

def _answers() -> int:
    """How many health answers this master's workers have given, this one included."""
    path = os.path.join(os.environ.get("JOBAPP_DATA_DIR", "."), f"health-answers-{os.getppid()}")
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("x")
        handle.flush()
        return os.path.getsize(path)
'''


def _flap_health(work: Path) -> None:
    health = work / "jobapp" / "health.py"
    text = health.read_text()
    anchor = "    services = {name: probe(checks[name]) for name in SERVICES}\n"
    assert anchor in text, "jobapp/health.py changed: update the HEALTH_FLAPS release"
    text = text.replace("import time\n", "import fcntl\nimport os\nimport time\n", 1)
    text = text.replace(anchor, anchor + FLAP, 1)
    health.write_text(text.rstrip("\n") + "\n" + ANSWERS)


def _append_readme(line: str):  # type: ignore[no-untyped-def]
    def change(work: Path) -> None:
        readme = work / "README.md"
        readme.write_text(readme.read_text() + f"\n{line}\n")
    return change


def _git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LC_ALL": "C",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Fault Injector", "GIT_AUTHOR_EMAIL": "faults@jobapp.invalid",
           "GIT_COMMITTER_NAME": "Fault Injector", "GIT_COMMITTER_EMAIL": "faults@jobapp.invalid",
           "GIT_AUTHOR_DATE": DATE, "GIT_COMMITTER_DATE": DATE}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()
