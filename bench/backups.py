"""Backups: our verified backup and restore against the database's own tool alone, on 1 GB of data.

  SQLite      take_backup (backup API, fsync, sha256, quick_check, revision and row counts read
              back from the copy: the default `[backups] sqlite_check = "quick"`) against
              `sqlite3 SRC ".backup DST"`; the same with `sqlite_check = "integrity"` is reported too;
              restore_backup (sha256 check, backup API, revision and row counts) against
              `sqlite3 LIVE ".restore FILE"`
  PostgreSQL  take_backup (revision, schema and row counts read from the snapshot `pg_dump -Fc`
              streams, the archive written, hashed and restored into a scratch database as it comes,
              the restored copy compared and dropped) against `pg_dump -Fc` alone;
              restore_backup (sha256 check, other sessions ended, `pg_restore --single-transaction
              --clean`, revision and row counts) against the same `pg_restore` command alone

The data is jobapp's schema (revision 0001: jobs with text descriptions and the source URL index,
applications, documents, outbox, user_sessions), generated inside the database. Each round runs both
sides, alternating which goes first, each after a `sync` (and on PostgreSQL a `CHECKPOINT`) so that no side pays for the other's
write-back; the figures are the medians of the rounds. Targets: backup with verification ≤ 1.5× the
bare `.backup` on SQLite and, proven by a restore, ≤ 1.5× the bare `pg_dump -Fc` on PostgreSQL;
restores are reported.

    .venv/bin/python bench/backups.py [--size-gb 1] [--rounds 5] [--only sqlite|postgresql] [--profile]

Needs the sqlite3 command (Debian: `apt-get install sqlite3`), pg_dump and pg_restore, and
PostgreSQL at DEPLOY_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432, as the tests use); it creates
and drops a scratch database of its own, and writes its files under a temporary directory (--dir).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from tasks.backups import restore_backup, take_backup  # noqa: E402

GiB = 1 << 30
REVISION = "0001"
ADMIN_URL = os.environ.get("DEPLOY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TARGETS = {"sqlite": 1.5, "postgresql": 1.5}

SCHEMA = """
CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));
CREATE TABLE jobs (id INTEGER NOT NULL, source_url VARCHAR(500) NOT NULL, title VARCHAR(200) NOT NULL,
    company VARCHAR(200), location VARCHAR(200) NOT NULL, description TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL, CONSTRAINT pk_jobs PRIMARY KEY (id));
CREATE TABLE applications (id INTEGER NOT NULL, job_id INTEGER NOT NULL, score INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL, CONSTRAINT pk_applications PRIMARY KEY (id),
    CONSTRAINT fk_applications_job_id_jobs FOREIGN KEY (job_id) REFERENCES jobs (id));
CREATE TABLE documents (id INTEGER NOT NULL, job_id INTEGER NOT NULL, path VARCHAR(500) NOT NULL,
    sha256 VARCHAR(64) NOT NULL, created_at TIMESTAMP NOT NULL, CONSTRAINT pk_documents PRIMARY KEY (id));
CREATE TABLE outbox (id INTEGER NOT NULL, recipient VARCHAR(320) NOT NULL, subject VARCHAR(300) NOT NULL,
    body TEXT NOT NULL, status VARCHAR(20) NOT NULL, created_at TIMESTAMP NOT NULL,
    CONSTRAINT pk_outbox PRIMARY KEY (id));
CREATE TABLE user_sessions (user_id VARCHAR(128) NOT NULL, last_seen TIMESTAMP NOT NULL,
    CONSTRAINT pk_user_sessions PRIMARY KEY (user_id));
"""
INDEXES = """
CREATE INDEX ix_jobs_source_url ON jobs (source_url);
CREATE INDEX ix_applications_job_id ON applications (job_id);
CREATE INDEX ix_user_sessions_last_seen ON user_sessions (last_seen);
"""
# A job ad's worth of prose; each description is a slice of it at a random offset plus a reference,
# so rows differ but compress about as well as real ones.
PROSE = ("We are looking for an engineer who enjoys owning services end to end. You will design APIs, "
         "review code, mentor colleagues and keep our data pipelines healthy. Experience with Python, SQL, "
         "message queues and cloud infrastructure is a plus. We offer flexible hours, a learning budget, "
         "parental leave and a friendly team that values clear writing over meetings. The role reports to "
         "the head of platform and works closely with product, support and the data team. ") * 6
BATCH = 50_000


@dataclass
class Side:
    """One side's timings over the rounds, and the stage timings of ours."""
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each database, GiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--profile", action="store_true", help="print where one of our backups spends its time")
    args = parser.parse_args()
    measured = [bench(kind, args) for kind in ("sqlite", "postgresql") if args.only in (None, kind)]
    return 0 if all(measured) else 1


def bench(kind: str, args: argparse.Namespace) -> bool:
    label = "SQLite" if kind == "sqlite" else "PostgreSQL"
    size = int(args.size_gb * GiB)
    backup_figure = f"backup, {label} {args.size_gb:g} GiB (ours " + ("verified)" if kind == "sqlite" else "restore-proven)")
    restore_figure = f"restore, {label} {args.size_gb:g} GiB (ours checked)"
    tool = "sqlite3" if kind == "sqlite" else "pg_dump"
    problem = None
    if shutil.which(tool) is None:
        problem = f"the {tool} command is missing" + (" (apt-get install sqlite3)" if kind == "sqlite" else "")
    elif shutil.disk_usage(args.dir).free < 5 * size:
        problem = f"{args.dir} has less than {5 * size / GiB:.1f} GiB free"
    if problem is None and kind == "postgresql":
        problem = postgres_problem()
    if problem is not None:
        print(f"\n{label}: not measured: {problem}")
        for figure in (backup_figure, restore_figure):
            result(figure, None, None, TARGETS[kind] if figure == backup_figure else None, "s", note=problem)
        return False
    work = Path(tempfile.mkdtemp(prefix="bench-backups-", dir=args.dir))
    try:
        runner = SqliteBench(work, size) if kind == "sqlite" else PostgresBench(work, size)
        with runner:
            started = time.perf_counter()
            described = runner.generate()
            print(f"\n{label}: {described}, generated in {time.perf_counter() - started:.1f} s")
            sides, full = measure(runner, args.rounds)
            if args.profile:
                profile(runner)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(label, runner.baseline_names, sides)
    ours_backup, base_backup, ours_restore, base_restore = sides
    result(backup_figure, ours_backup.median, base_backup.median, TARGETS[kind], "s")
    if full is not None:
        print(f"  our backup with integrity_check instead of quick_check: {full.median:.2f} s "
              f"({full.median / base_backup.median:.2f}× {runner.baseline_names[0]})")
        result(f"backup, {label} {args.size_gb:g} GiB (ours, integrity_check)", full.median, base_backup.median,
               None, "s")
    result(restore_figure, ours_restore.median, base_restore.median, None, "s")
    return True


def measure(runner: Bench, rounds: int) -> tuple[tuple[Side, Side, Side, Side], Side | None]:
    """Both sides of backup and restore each round, and our backup with the full check where there is one."""
    ours_backup, base_backup, ours_restore, base_restore = Side(), Side(), Side(), Side()
    full_check = getattr(runner, "our_backup_full_check", None)
    ours_full = Side() if full_check is not None else None
    for number in range(rounds):
        runner.clear()
        # Alternate the order: whichever side runs second finds a warmer page cache.
        pairs = [(runner.our_backup, ours_backup), (runner.baseline_backup, base_backup)]
        for step, side in pairs if number % 2 == 0 else pairs[::-1]:
            runner.settle()
            side.seconds.append(timed(step, side))
        pairs = [(runner.our_restore, ours_restore), (runner.baseline_restore, base_restore)]
        for step, side in pairs if number % 2 == 0 else pairs[::-1]:
            runner.settle()
            side.seconds.append(timed(step, side))
        if full_check is not None and ours_full is not None:
            ours_full.seconds.append(timed(full_check, ours_full))
        print(f"  round {number + 1}: backup ours {ours_backup.seconds[-1]:.2f} s, "
              f"{runner.baseline_names[0]} {base_backup.seconds[-1]:.2f} s; restore ours "
              f"{ours_restore.seconds[-1]:.2f} s, {runner.baseline_names[1]} {base_restore.seconds[-1]:.2f} s",
              flush=True)
    return (ours_backup, base_backup, ours_restore, base_restore), ours_full


def timed(step: Callable[[], dict[str, float] | None], side: Side) -> float:
    os.sync()
    started, cpu = time.perf_counter(), cpu_seconds()
    stages = step()
    seconds = time.perf_counter() - started
    side.cpu.append(cpu_seconds() - cpu)
    if stages:
        side.stages.append(stages)
    return seconds


def cpu_seconds() -> float:
    """CPU time of this process's threads and of the tools it ran (not the PostgreSQL server's)."""
    own, tools = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + tools.ru_utime + tools.ru_stime


def profile(runner: Bench) -> None:
    runner.clear()
    os.sync()
    profiler = cProfile.Profile()
    profiler.runcall(runner.our_backup)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(18)
    print("\n  profile of one of our backups (cumulative):")
    print("\n".join("    " + line for line in out.getvalue().splitlines() if line.strip()))


def report(label: str, baseline_names: tuple[str, str], sides: tuple[Side, Side, Side, Side]) -> None:
    ours_backup, base_backup, ours_restore, base_restore = sides
    rows = [("backup", ours_backup, base_backup, baseline_names[0]),
            ("restore", ours_restore, base_restore, baseline_names[1])]
    print(f"  {'':8} {'ours (median)':>14} {'baseline (median)':>18}  {'ratio':>6}  {'CPU ours':>9} "
          f"{'baseline':>9}  baseline")
    for name, ours, base, tool in rows:
        print(f"  {name:8} {ours.median:>12.2f} s {base.median:>16.2f} s  {ours.median / base.median:>5.2f}×  "
              f"{statistics.median(ours.cpu):>7.2f} s {statistics.median(base.cpu):>7.2f} s  {tool}")
    print(f"  (CPU: this process and the tools it ran, not the database server; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    for name, ours in (("backup", ours_backup), ("restore", ours_restore)):
        if ours.stages:
            keys = list(ours.stages[0])
            stages = ", ".join(f"{k} {statistics.median(s.get(k, 0.0) for s in ours.stages):.2f} s" for k in keys)
            print(f"  our {name} by stage (medians): {stages}")


def result(figure: str, ours: float | None, baseline: float | None, target: float | None, unit: str,
           note: str | None = None) -> None:
    ratio = round(ours / baseline, 3) if ours is not None and baseline else None
    payload: dict[str, Any] = {
        "figure": figure,
        "ours": None if ours is None else round(ours, 3),
        "baseline": None if baseline is None else round(baseline, 3),
        "ratio": ratio,
        "target": None if target is None else f"≤ {target:g}×",
        # A figure without a target is reported, not judged, unless it could not be measured.
        "met": False if note else None if target is None else ratio is not None and ratio <= target,
        "unit": unit,
    }
    if note:
        payload["note"] = note
    print("RESULT " + json.dumps(payload, ensure_ascii=False), flush=True)


class Bench:
    """One database kind: its data, our backup and restore, and the tool's own."""
    baseline_names: tuple[str, str]
    url: str

    def __init__(self, work: Path, size: int) -> None:
        self.work = work
        self.size = size
        self.backups = work / "backups"
        self.tag_number = 0
        self.tag = ""

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def new_tag(self) -> str:
        self.tag_number += 1
        return f"pre-deployment-20260101-{self.tag_number:06d}"

    def settle(self) -> None:
        """Before each timed side: nothing the previous side wrote is still being written back."""

    def clear(self) -> None:
        """Removes the previous round's copies: every backup is written to a fresh file."""
        shutil.rmtree(self.backups, ignore_errors=True)
        for path in self.work.glob("baseline.*"):
            path.unlink()

    def our_backup(self, sqlite_check: str = "quick") -> dict[str, float]:
        self.tag = self.new_tag()
        manifest = take_backup(self.url, self.backups, self.tag, revision=REVISION, git_sha="0" * 40,
                               run_id="bench", sqlite_check=sqlite_check)
        return manifest.seconds

    def our_restore(self) -> None:
        restore_backup(self.url, self.backups, self.tag)

    def generate(self) -> str:
        raise NotImplementedError

    def baseline_backup(self) -> None:
        raise NotImplementedError

    def baseline_restore(self) -> None:
        raise NotImplementedError


class SqliteBench(Bench):
    baseline_names = ("sqlite3 .backup", "sqlite3 .restore")

    def our_backup_full_check(self) -> dict[str, float]:
        """`[backups] sqlite_check = "integrity"`; its copy is removed at once (the restore uses the last quick one)."""
        tag = self.tag
        try:
            return self.our_backup("integrity")
        finally:
            shutil.rmtree(self.backups / self.tag, ignore_errors=True)
            self.tag = tag

    def __init__(self, work: Path, size: int) -> None:
        super().__init__(work, size)
        self.path = work / "app.db"
        self.url = f"sqlite:///{self.path}"
        self.copy = work / "baseline.sqlite3"

    def generate(self) -> str:
        conn = sqlite3.connect(self.path)
        try:
            conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
            conn.execute("INSERT INTO alembic_version VALUES (?)", (REVISION,))
            jobs = 0
            # Jobs grow until the data is the size asked for, the other tables in proportion;
            # the indexes come last, as a restore builds them.
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            while conn.execute("PRAGMA page_count").fetchone()[0] * page_size < self.size * 0.9:
                conn.execute(SQLITE_JOBS, (jobs + 1, jobs + BATCH, PROSE))
                conn.execute(SQLITE_APPLICATIONS, (3 * jobs + 1, 3 * (jobs + BATCH)))
                conn.execute(SQLITE_OUTBOX, (jobs // 10 + 1, (jobs + BATCH) // 10, PROSE))
                conn.execute(SQLITE_SESSIONS, (jobs // 5 + 1, (jobs + BATCH) // 5))
                conn.execute(SQLITE_DOCUMENTS, (jobs // 4 + 1, (jobs + BATCH) // 4))
                jobs += BATCH
                conn.commit()
            conn.executescript(INDEXES)
            conn.commit()
            conn.execute("PRAGMA journal_mode=WAL")
            rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in
                       ("jobs", "applications", "documents", "outbox", "user_sessions"))
        finally:
            conn.close()
        return f"{self.path.stat().st_size / GiB:.2f} GiB, {rows:,} rows (WAL mode)"

    def baseline_backup(self) -> None:
        run(["sqlite3", str(self.path), f".backup '{self.copy}'"])

    def baseline_restore(self) -> None:
        run(["sqlite3", str(self.path), f".restore '{self.copy}'"])


SQLITE_SERIES = "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
SQLITE_JOBS = ("INSERT INTO jobs " + SQLITE_SERIES + """
SELECT i, 'https://jobs.example.com/' || (i % 50000) || '/' || lower(hex(randomblob(6))),
  CASE i % 5 WHEN 0 THEN 'Senior ' WHEN 1 THEN 'Staff ' WHEN 2 THEN 'Junior ' WHEN 3 THEN 'Lead ' ELSE '' END ||
  CASE i % 4 WHEN 0 THEN 'Backend Engineer' WHEN 1 THEN 'Data Analyst' WHEN 2 THEN 'SRE' ELSE 'Product Designer' END,
  CASE WHEN i % 17 = 0 THEN NULL ELSE 'Company ' || (i % 9000) END,
  CASE i % 6 WHEN 0 THEN 'Berlin' WHEN 1 THEN 'Remote' WHEN 2 THEN 'Lisbon' WHEN 3 THEN 'Toronto'
             WHEN 4 THEN 'Austin' ELSE 'Nairobi' END,
  substr(?3, 1 + abs(random()) % 1500, 700 + abs(random()) % 500) || ' Ref ' || lower(hex(randomblob(8))),
  datetime(1700000000 + i * 37, 'unixepoch')
FROM n""")
SQLITE_APPLICATIONS = ("INSERT INTO applications " + SQLITE_SERIES +
                       "SELECT i, (i + 2) / 3, abs(random()) % 100, "
                       "datetime(1700000000 + i * 13, 'unixepoch') FROM n")
SQLITE_OUTBOX = ("INSERT INTO outbox " + SQLITE_SERIES +
                 "SELECT i, 'candidate' || i || '@example.org', 'Your application #' || i, "
                 "substr(?3, 1 + abs(random()) % 1500, 300), "
                 "CASE i % 3 WHEN 0 THEN 'sent' WHEN 1 THEN 'queued' ELSE 'failed' END, "
                 "datetime(1700000000 + i * 370, 'unixepoch') FROM n")
SQLITE_SESSIONS = ("INSERT INTO user_sessions " + SQLITE_SERIES +
                   "SELECT 'user-' || i || '-' || lower(hex(randomblob(8))), "
                   "datetime(1700000000 + abs(random()) % 10000000, 'unixepoch') FROM n")
SQLITE_DOCUMENTS = ("INSERT INTO documents " + SQLITE_SERIES +
                    "SELECT i, 4 * i, 'documents/' || i || '.pdf', lower(hex(randomblob(32))), "
                    "datetime(1700000000 + i * 150, 'unixepoch') FROM n")


class PostgresBench(Bench):
    baseline_names = ("pg_dump -Fc", "pg_restore")

    def __init__(self, work: Path, size: int) -> None:
        super().__init__(work, size)
        self.name = f"bench_backups_{os.getpid()}"
        self.url = make_url(ADMIN_URL).set(database=self.name).render_as_string(hide_password=False)
        self.copy = work / "baseline.dump"
        self.admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        parsed = make_url(ADMIN_URL)
        self.args = ["--host", parsed.host or "127.0.0.1", "--port", str(parsed.port or 5432),
                     "--username", parsed.username or "postgres", "--no-password"]

    def __enter__(self) -> PostgresBench:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc: object) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()

    def generate(self) -> str:
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(SCHEMA)
                conn.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": REVISION})
            jobs = 0
            while True:
                with engine.begin() as conn:
                    size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
                    if size >= self.size * 0.88:
                        break
                    conn.execute(text(POSTGRES_JOBS), {"first": jobs + 1, "last": jobs + BATCH, "prose": PROSE})
                    conn.execute(text(POSTGRES_APPLICATIONS), {"first": 3 * jobs + 1, "last": 3 * (jobs + BATCH)})
                    conn.execute(text(POSTGRES_OUTBOX), {"first": jobs // 10 + 1, "last": (jobs + BATCH) // 10,
                                                         "prose": PROSE})
                    conn.execute(text(POSTGRES_SESSIONS), {"first": jobs // 5 + 1, "last": (jobs + BATCH) // 5})
                    conn.execute(text(POSTGRES_DOCUMENTS), {"first": jobs // 4 + 1, "last": (jobs + BATCH) // 4})
                jobs += BATCH
            with engine.begin() as conn:
                conn.exec_driver_sql(INDEXES)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
                size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
                rows = conn.execute(text("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM applications)"
                                         " + (SELECT count(*) FROM documents) + (SELECT count(*) FROM outbox)"
                                         " + (SELECT count(*) FROM user_sessions)")).scalar_one()
        finally:
            engine.dispose()
        return f"{size / GiB:.2f} GiB (pg_database_size), {rows:,} rows"

    def settle(self) -> None:
        """A restore leaves a gigabyte of dirty pages and WAL that the server's checkpointer writes
        back over the next minutes, during whichever side runs next: a CHECKPOINT first, as the
        `sync` before each side does for files."""
        with self.admin.connect() as conn:
            conn.execute(text("CHECKPOINT"))

    def baseline_backup(self) -> None:
        run(["pg_dump", *self.args, "--format=custom", "--file", str(self.copy), "--dbname", self.name])

    def baseline_restore(self) -> None:
        # The same pg_restore command restore_backup runs, without the checks around it.
        run(["pg_restore", *self.args, "--single-transaction", "--clean", "--if-exists", "--no-owner",
             "--exit-on-error", "--dbname", self.name, str(self.copy)])


POSTGRES_SERIES = "FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS i"
POSTGRES_JOBS = """INSERT INTO jobs
SELECT i, 'https://jobs.example.com/' || (i % 50000) || '/' || substr(md5(random()::text), 1, 12),
  (ARRAY['Senior ', 'Staff ', 'Junior ', 'Lead ', ''])[1 + i % 5] ||
  (ARRAY['Backend Engineer', 'Data Analyst', 'SRE', 'Product Designer'])[1 + i % 4],
  CASE WHEN i % 17 = 0 THEN NULL ELSE 'Company ' || (i % 9000) END,
  (ARRAY['Berlin', 'Remote', 'Lisbon', 'Toronto', 'Austin', 'Nairobi'])[1 + i % 6],
  substr(CAST(:prose AS text), 1 + (random() * 1500)::int, 700 + (random() * 500)::int)
    || ' Ref ' || substr(md5(random()::text), 1, 16),
  to_timestamp(1700000000 + i * 37) AT TIME ZONE 'UTC'
""" + POSTGRES_SERIES
POSTGRES_APPLICATIONS = ("INSERT INTO applications SELECT i, (i + 2) / 3, "
                         "(random() * 100)::int, to_timestamp(1700000000 + i * 13) AT TIME ZONE 'UTC' "
                         + POSTGRES_SERIES)
POSTGRES_OUTBOX = ("INSERT INTO outbox SELECT i, 'candidate' || i || '@example.org', 'Your application #' || i, "
                   "substr(CAST(:prose AS text), 1 + (random() * 1500)::int, 300), "
                   "(ARRAY['sent', 'queued', 'failed'])[1 + i % 3], "
                   "to_timestamp(1700000000 + i * 370) AT TIME ZONE 'UTC' " + POSTGRES_SERIES)
POSTGRES_SESSIONS = ("INSERT INTO user_sessions SELECT 'user-' || i || '-' || substr(md5(random()::text), 1, 16), "
                     "to_timestamp(1700000000 + (random() * 10000000)::int) AT TIME ZONE 'UTC' " + POSTGRES_SERIES)
POSTGRES_DOCUMENTS = ("INSERT INTO documents SELECT i, 4 * i, 'documents/' || i || '.pdf', md5(i::text) || "
                      "md5((i + 1)::text), to_timestamp(1700000000 + i * 150) AT TIME ZONE 'UTC' " + POSTGRES_SERIES)


def postgres_problem() -> str | None:
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            return f"the {tool} command is missing"
    engine = create_engine(ADMIN_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"PostgreSQL at {make_url(ADMIN_URL).render_as_string(hide_password=True)} is unreachable: " \
               f"{str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def run(argv: list[str]) -> None:
    completed = subprocess.run(argv, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({completed.returncode}): {completed.stderr.strip()[-500:]}")


if __name__ == "__main__":
    sys.exit(main())
