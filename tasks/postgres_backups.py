"""PostgreSQL backups, proven by a restore: the archive `pg_dump -Fc` writes is restored into a scratch
database while it is written, and the copy is compared with what was dumped.

`pg_restore --list` or `-f /dev/null` prove too little: a damaged table of contents passes both and
fails only when restored for real. So the dump goes through a pipe: each chunk is written to the
archive file, hashed, and fed to `pg_restore --dbname <scratch>` at once, on the other core. When both
have finished, the scratch database's revision, schema fingerprint and row counts must equal those
read from the dumped snapshot, or the backup is never published. Then the scratch database is
dropped. The manifest records what proved it and how long the restore took.

The copy is thrown away, so it need not survive a crash: its tables are made first, from the same
snapshot's schema (`pg_dump --section=pre-data`), and set UNLOGGED, and the archive's data and
indexes stream into them without writing the server's WAL (a third of the restore's time). The
archive's own schema is then restored alone, from the file, into a second, empty scratch database,
and its fingerprint compared too: every section of the archive is restored by pg_restore, and a
damaged table definition fails the proof as surely as damaged data.

Every libpq session here is named `deploy-<run>-...` (PGAPPNAME) and bounded: pg_dump waits at most
`lock_timeout` for its table locks (`--lock-wait-timeout`), and `tasks.lock_waits` watches both tools,
logs who holds a lock they wait for, and cancels a wait past the bound. The password goes in a 0600
passfile, never in argv or the environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Union

from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from deployments.errors import BackupFailed
from deployments.secrets import redact
from tasks.database_state import DatabaseState, read_state
from tasks.databases import connect
from tasks.lock_waits import LockWatch, watching_lock_waits
from tasks.processes import Advice, Command, run, spawn, wait

Logger = Union[logging.Logger, "logging.LoggerAdapter[logging.Logger]"]

CHUNK = 1 << 20
SCRATCH_SORT_MEMORY = "256MB"
PROGRESS_SECONDS = 30.0
TOOL_ADVICE = Advice(start="install PostgreSQL's client tools or set [backups] pg_dump and pg_restore; nothing was migrated",
                     slow="check the database server and the disk; nothing was migrated")


@dataclass(frozen=True)
class Tools:
    pg_dump: str = "pg_dump"
    pg_restore: str = "pg_restore"
    lock_timeout_ms: int = 5000
    session: str = "deploy-cli"  # application_name prefix of every session
    compression: int = 1  # pg_dump's gzip level

    @property
    def bound_seconds(self) -> float:
        """How long the watch lets a tool wait for a lock before cancelling it: the tools bound their
        own waits at the lock timeout too; the watch ends a wait one of them does not bound."""
        return self.lock_timeout_ms / 1000


@dataclass(frozen=True)
class ProvenDump:
    source: DatabaseState
    sha256: str
    size_bytes: int
    dump_seconds: float
    restore_seconds: float
    server_version: str
    pg_dump_version: str


@contextmanager
def passfile(parsed: URL, application_name: str) -> Iterator[dict[str, str]]:
    """libpq's environment for a tool: no password in argv or the environment (a 0600 passfile), a
    connect timeout, and the session's name."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": application_name}
    with tempfile.TemporaryDirectory(prefix="deploy-pg-") as tmp:
        path = Path(tmp) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            if parsed.password:
                # Any database: the same credentials serve the scratch copies.
                fields = [parsed.host or "localhost", str(parsed.port or 5432), "*", parsed.username or "*",
                          str(parsed.password)]
                handle.write(":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n")
        env["PGPASSFILE"] = str(path)
        yield env


def connection_args(parsed: URL) -> list[str]:
    args = ["--host", parsed.host or "localhost", "--port", str(parsed.port or 5432)]
    if parsed.username:
        args += ["--username", parsed.username]
    return args + ["--no-password"]


def dump_and_prove(parsed: URL, target: Path, tools: Tools, expected_revision: str | None,
                   logger: Logger) -> ProvenDump:
    """Write the archive of `parsed`'s database to `target`, restoring it into a scratch database as it
    is written; raise BackupFailed unless the restored copy agrees with the dumped snapshot."""
    url = parsed.render_as_string(hide_password=False)
    step = "backup database"
    source = connect(url, f"{tools.session}-backup", lock_timeout_ms=tools.lock_timeout_ms)
    try:
        with scratch_database(source, parsed, "verify", step) as scratch, source.connect() as conn, \
                watching_lock_waits(url, tools.session, step, tools.bound_seconds, logger) as watch:
            try:
                conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                server_version = str(conn.exec_driver_sql("SHOW server_version").scalar())
                started = time.perf_counter()
                _make_tables(conn, parsed, tools, snapshot, scratch, logger)
                stream = _Stream(logger, step, "nothing was migrated")
                stream.start(_dump_argv(parsed, tools, snapshot), _restore_argv(parsed, tools, scratch, DATA),
                             passfile(parsed, f"{tools.session}-backup"), target)
                try:
                    # The source's figures, from the snapshot pg_dump reads, while it reads it (a full
                    # scan of each table, on the other core).
                    dumped = read_state(conn)
                except BaseException:
                    stream.cancel()
                    raise
                digest, size, restore_seconds = stream.result()
                dump_seconds = time.perf_counter() - started
                conn.exec_driver_sql("COMMIT")
            except SQLAlchemyError as exc:
                raise _failed(step, exc, watch, "nothing was changed") from None
            except BackupFailed as exc:
                raise _named(exc, watch) from None
            if dumped.revision != expected_revision:
                raise BackupFailed(step, f"the database moved to revision {dumped.revision} (expected "
                                         f"{expected_revision})", "something else is migrating; stop it")
            restored = _state_of(parsed.set(database=scratch), tools)
        problems = dumped.differences(restored)
        if not problems:
            with scratch_database(source, parsed, "verify", step) as empty:
                schema_seconds = _restore_schema(target, parsed, tools, empty)
                restore_seconds += schema_seconds
                alone = _state_of(parsed.set(database=empty), tools, counts=False)
            if alone.fingerprint != dumped.fingerprint:
                problems = [f"its schema restored alone has fingerprint {alone.fingerprint[:12]}, expected "
                            f"{dumped.fingerprint[:12]}"]
    finally:
        source.dispose()
    if problems:
        raise BackupFailed("verify backup", "the archive restored into a scratch database does not match the "
                           f"database it was taken from: {'; '.join(problems)}",
                           "do not deploy: the backup could not be restored; check pg_dump, pg_restore and the disk")
    return ProvenDump(dumped, digest, size, round(dump_seconds, 3), round(restore_seconds, 3), server_version,
                      _tool_version(tools.pg_dump))


def _make_tables(source: Connection, parsed: URL, tools: Tools, snapshot: str, scratch: str, logger: Logger) -> None:
    """The scratch copy's tables, from the snapshot's own schema, set UNLOGGED: what is restored into
    them writes no WAL. A partitioned table cannot be, and a permanent table may reference only
    permanent ones, so those stay logged (`_unloggable`); if PostgreSQL refuses any other, they all
    do (slower, as sound)."""
    stream = _Stream(logger, "backup database", "nothing was migrated")
    stream.start(_dump_argv(parsed, tools, snapshot, SCHEMA), _restore_argv(parsed, tools, scratch),
                 passfile(parsed, f"{tools.session}-backup"), None)
    try:
        stream.result()
    except BackupFailed as exc:
        raise BackupFailed(exc.step, f"could not make the scratch copy's tables: {exc.cause}", exc.action) from None
    tables = _unloggable(source)
    engine = connect(parsed.set(database=scratch).render_as_string(hide_password=False),
                     f"{tools.session}-backup-verify")
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            done: list[str] = []
            try:
                for table in tables:
                    conn.execute(text(f"ALTER TABLE {table} SET UNLOGGED"))
                    done.append(table)
            except SQLAlchemyError as exc:
                logger.info("backup database: the scratch copy stays logged (%s: %s); the proof takes longer",
                            table, _first_line(exc))
                for table in done:
                    conn.execute(text(f"ALTER TABLE {table} SET LOGGED"))
    finally:
        engine.dispose()


def _unloggable(conn: Connection) -> list[str]:
    """The source's ordinary tables that its copy may hold unlogged: all but those a partitioned table
    (always logged) references by a foreign key, and what those reference in turn."""
    tables = conn.exec_driver_sql(
        "SELECT c.oid, c.relkind, format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'").all()
    references = conn.exec_driver_sql("SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f'").all()
    logged = {oid for oid, kind, _ in tables if kind == "p"}
    while True:
        more = {target for source, target in references if source in logged and target not in logged}
        if not more:
            break
        logged |= more
    return sorted(name for oid, _, name in tables if oid not in logged)


def _restore_schema(archive: Path, parsed: URL, tools: Tools, database: str) -> float:
    """The archive's schema (pre- and post-data), from the file alone, into an empty database."""
    argv = _restore_argv(parsed, tools, database, ("pre-data", "post-data")) + [str(archive)]
    started = time.perf_counter()
    with passfile(parsed, f"{tools.session}-backup-restore") as env, tempfile.TemporaryFile() as errors:
        code = _wait(_spawn(argv, env, "verify backup", stdout=subprocess.DEVNULL, stderr=errors))
        if code != 0:
            raise BackupFailed("verify backup", f"the archive's schema could not be restored: {_last_words(errors)}",
                               "do not deploy: the backup could not be restored; check pg_dump, pg_restore and the disk")
    return time.perf_counter() - started


@contextmanager
def scratch_copy(parsed: URL, tools: Tools, logger: Logger, step: str) -> Iterator[URL]:
    """A throwaway copy of the database, streamed (`pg_dump | pg_restore`, no file) into a database of
    its own that is dropped after the block; every wait for a lock bounded and named."""
    url = parsed.render_as_string(hide_password=False)
    admin = connect(url, f"{tools.session}-copy", lock_timeout_ms=tools.lock_timeout_ms)
    try:
        with scratch_database(admin, parsed, "rehearsal", step) as scratch:
            with watching_lock_waits(url, tools.session, step, tools.bound_seconds, logger) as watch:
                stream = _Stream(logger, step)
                # Nothing is kept of this copy's archive: not compressed, it costs neither end any CPU.
                stream.start(_dump_argv(parsed, replace(tools, compression=0)), _restore_argv(parsed, tools, scratch),
                             passfile(parsed, f"{tools.session}-copy"), None)
                try:
                    stream.result()
                except BackupFailed as exc:
                    raise _named(exc, watch) from None
            yield parsed.set(database=scratch)
    finally:
        admin.dispose()


def restore_archive(path: Path, parsed: URL, tools: Tools, keep_tables: set[str], logger: Logger) -> None:
    """Put the live database back as the archive has it, in one transaction: the app's sessions are
    ended (it is in maintenance), tables the archive lacks dropped, the rest replaced. A lock that
    another session holds past the bound fails the restore, unchanged, naming that session."""
    step = "restore backup"
    url = parsed.render_as_string(hide_password=False)
    engine = connect(url, f"{tools.session}-restore", lock_timeout_ms=tools.lock_timeout_ms)
    try:
        with watching_lock_waits(url, tools.session, step, tools.bound_seconds, logger) as watch:
            try:
                _end_other_sessions(engine)
                _drop_tables_not_in(engine, keep_tables)
            except SQLAlchemyError as exc:
                raise _failed(step, exc, watch, "the database is unchanged; keep maintenance on") from None
            argv = [tools.pg_restore, *connection_args(parsed), "--single-transaction", "--clean", "--if-exists",
                    "--no-owner", "--exit-on-error", "--dbname", parsed.database or "", str(path)]
            with passfile(parsed, f"{tools.session}-restore") as env, tempfile.TemporaryFile() as errors:
                code = _wait(_spawn(argv, env, step, stdout=subprocess.DEVNULL, stderr=errors))
                if code != 0:
                    raise _named(BackupFailed(step, f"pg_restore failed: {_last_words(errors)}",
                                              "the database is unchanged (single transaction); keep maintenance "
                                              "on and restore by hand"), watch)
    finally:
        engine.dispose()


def _end_other_sessions(engine: Engine) -> None:
    """Sessions of the app would block --clean's DROPs until the bound; the app is in maintenance."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        conn.commit()


def _drop_tables_not_in(engine: Engine, keep_tables: set[str]) -> None:
    """`--clean` drops only what the archive holds: a table a failed migration created would survive."""
    with engine.begin() as conn:
        for table in inspect(conn).get_table_names():
            if table not in keep_tables:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))


@contextmanager
def scratch_database(admin: Engine, parsed: URL, purpose: str, step: str) -> Iterator[str]:
    """An empty database beside the source, dropped (with any session still in it) after the block."""
    name = f"{(parsed.database or 'db')[:30]}_{purpose}_{secrets.token_hex(4)}"
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as exc:
        raise BackupFailed(step, f"cannot create the scratch database it needs ({_first_line(exc)})",
                           "grant the database user CREATEDB (the copy is created beside the database and "
                           "dropped after); nothing was changed") from None
    try:
        yield name
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


SCHEMA = ("pre-data",)  # the tables, types, sequences and functions
DATA = ("data", "post-data")  # the rows, then indexes, constraints and triggers


def _dump_argv(parsed: URL, tools: Tools, snapshot: str | None = None, sections: tuple[str, ...] = ()) -> list[str]:
    # pg_dump sets its own lock_timeout to 0; --lock-wait-timeout bounds its wait for table locks.
    return [tools.pg_dump, *connection_args(parsed), "--format=custom", f"--compress={tools.compression}",
            *(["--snapshot", snapshot] if snapshot else []), *[f"--section={s}" for s in sections],
            f"--lock-wait-timeout={tools.lock_timeout_ms}", "--dbname", parsed.database or ""]


def _restore_argv(parsed: URL, tools: Tools, database: str, sections: tuple[str, ...] = ()) -> list[str]:
    return [tools.pg_restore, *connection_args(parsed), "--no-owner", "--exit-on-error",
            *[f"--section={s}" for s in sections], "--dbname", database]


def _failed(step: str, exc: SQLAlchemyError, watch: LockWatch, nothing: str) -> BackupFailed:
    """A session of ours that failed: a lock it waited for names its holder, anything else its error."""
    if watch.seen is not None:
        return BackupFailed(step, f"waited for {watch.seen.describe()}",
                            f"end that session or wait for it to finish, then run again; {nothing}")
    return BackupFailed(step, f"the database refused: {redact(_first_line(exc))}",
                        f"check the database; {nothing}")


def _named(exc: BackupFailed, watch: LockWatch) -> BackupFailed:
    """A tool that gave up waiting says only "could not obtain lock": say whose lock it was."""
    if watch.seen is None:
        return exc
    return BackupFailed(exc.step, f"{exc.cause}; it waited for {watch.seen.describe()}",
                        "end that session or wait for it to finish, then run again; nothing was changed")


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


class _Stream:
    """`pg_dump | pg_restore`, pumped by a thread that also writes the archive to a file and hashes it
    when asked; the caller reads the source meanwhile, then takes `result()` or `cancel()`s."""

    def __init__(self, logger: Logger, step: str, consequence: str = "nothing was changed") -> None:
        self.logger = logger
        self.step = step
        self.consequence = consequence
        self.done = threading.Event()
        self.outcome: tuple[str, int, float] | None = None
        self.error: BaseException | None = None
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, dump_argv: list[str], restore_argv: list[str],
              environment: AbstractContextManager[dict[str, str]], target: Path | None) -> None:
        def run() -> None:
            try:
                with environment as env:
                    self.outcome = self._pump(dump_argv, restore_argv, env, target)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by result()
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, name=f"pg-stream-{self.step}", daemon=True).start()

    def cancel(self) -> None:
        """Stop the tools (the caller failed before they ended) and wait for the pump to notice."""
        for process in list(self.processes):
            if process.poll() is None:
                process.kill()
        self.done.wait(timeout=30)

    def result(self) -> tuple[str, int, float]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome

    def _pump(self, dump_argv: list[str], restore_argv: list[str], env: dict[str, str],
              target: Path | None) -> tuple[str, int, float]:
        digest = hashlib.sha256()
        size = 0
        # The scratch copy is thrown away: no wait for each commit's flush, and room to sort for
        # its indexes in memory. Both only for these sessions, and both cut the restore's time by a
        # fifth, which is what keeps it alongside the dump (bench/backups.py).
        restore_env = {**env, "PGAPPNAME": env["PGAPPNAME"] + "-restore",
                       "PGOPTIONS": f"-c synchronous_commit=off -c maintenance_work_mem={SCRATCH_SORT_MEMORY}"}
        with tempfile.TemporaryFile() as dump_errors, tempfile.TemporaryFile() as restore_errors, \
                (open(target, "wb") if target else nullcontext()) as archive:
            dump = _spawn(dump_argv, env, self.step, stdout=subprocess.PIPE, stderr=dump_errors)
            self.processes.append(dump)
            restore = _spawn(restore_argv, restore_env, self.step, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=restore_errors)
            self.processes.append(restore)
            started = time.perf_counter()
            assert dump.stdout is not None and restore.stdin is not None
            restore_open = True
            said = time.monotonic()
            try:
                for chunk in iter(lambda: dump.stdout.read(CHUNK), b""):  # type: ignore[union-attr]
                    if archive is not None:
                        archive.write(chunk)
                        digest.update(chunk)
                    size += len(chunk)
                    if restore_open:
                        try:
                            restore.stdin.write(chunk)
                        except BrokenPipeError:  # pg_restore stopped: its error is read below
                            restore_open = False
                    if time.monotonic() - said > PROGRESS_SECONDS:
                        said = time.monotonic()
                        self.logger.info("%s: %.1f MiB copied and restored so far", self.step, size / 2**20)
                if archive is not None:
                    archive.flush()
                    os.fsync(archive.fileno())
            finally:
                if restore_open:
                    try:
                        restore.stdin.close()
                    except BrokenPipeError:
                        pass
                dump_code = _wait(dump)
                restore_code = _wait(restore)
            seconds = time.perf_counter() - started
            if dump_code != 0:
                raise BackupFailed(self.step, f"pg_dump failed: {_last_words(dump_errors)}",
                                   f"fix the cause (disk, permissions, connection, a lock); {self.consequence}")
            if restore_code != 0:
                raise BackupFailed("verify backup" if target else self.step,
                                   f"the archive could not be restored: {_last_words(restore_errors)}",
                                   "do not deploy: the copy is unusable; check pg_dump, pg_restore and the disk")
        return digest.hexdigest(), size, seconds


def _state_of(parsed: URL, tools: Tools, counts: bool = True) -> DatabaseState:
    engine = connect(parsed.render_as_string(hide_password=False), f"{tools.session}-backup-verify")
    try:
        with engine.connect() as conn:
            return read_state(conn, counts=counts)
    finally:
        engine.dispose()


def _spawn(argv: list[str], env: dict[str, str], step: str, **streams: Any) -> subprocess.Popen[bytes]:
    return spawn(Command.of(argv, env=env), step=step, error=BackupFailed, advice=TOOL_ADVICE, **streams)


def _wait(process: subprocess.Popen[Any]) -> int:
    """A tool's exit: it ends when its input ends or its lock wait is cancelled; a day is a bound, not a plan."""
    return wait(process, 24 * 3600)


def _last_words(stream: IO[bytes]) -> str:
    stream.seek(0)
    words = " ".join(stream.read().decode(errors="replace").split())  # one line: the tools' errors span several
    return redact(words[-300:]) or "no message"


def _tool_version(tool: str) -> str:
    return run(Command.of([tool, "--version"], timeout=30), step="backup database", error=BackupFailed,
               advice=TOOL_ADVICE).stdout.strip()
