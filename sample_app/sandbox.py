"""The sandbox: a realistic staging + production pair of jobapp on loopback.

`up` builds, in one directory (default `.sandbox/`):

    origin.git/              bare repository; main carries v1..v5, plus an unmerged branch
    sandbox.env              0600; the database URLs the environment files name
    environments/            staging.toml, production.toml for this sandbox
    state/                   the orchestrator's ledger and metrics
    staging/ production/     app/ (a clone at v1), data/, run/ (pid), logs/, backups/

then migrates and seeds both databases (staging's data is clean, production's has the legacy rows
that break v3 and v4) and starts both apps. SQLite databases run in WAL mode, as production SQLite
usually does. `up` is idempotent; `down` stops what it started, by pid.

The environment files and sandbox.env are the operator's once written: `up` records what it wrote
(`generated.json`) and rewrites a file only while it is still exactly that, so an edit survives every
later `up` (which says it kept it); `up --reset` writes them afresh. The history is dated relative to
the moment the origin is built, so DORA figures read like a recent team's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import string
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from deployments.config import EnvironmentConfig, load_environment_file
from deployments.errors import DeployError
from deployments.secrets import resolve_app_environment, resolve_database_url
from tasks import app_process
from tasks.health import probe
from tasks.processes import Advice, Command, child_env, one_line, run
from tasks.migrations import database_revision
from tasks.process_state import running_pid

ENVIRONMENTS = ("staging", "production")
DEFAULT_PORTS = {"staging": 8101, "production": 8102}
PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = PROJECT_DIR / ".sandbox"
# `make demo-fleet`'s sandbox, beside `make demo`'s, on ports of its own.
FLEET_ROOT = PROJECT_DIR / ".sandbox-fleet"
FLEET_PORTS = {"staging": 8111, "production": 8112}
TEMPLATE = Path(__file__).with_name("environment.toml.in")
GENERATED = "generated.json"


class SandboxError(RuntimeError):
    pass


TOOL_ADVICE = Advice(start="install it (the sandbox needs git and the app's interpreter)",
                     slow="the machine may be overloaded; run `deployctl sandbox up` again")


@dataclass(frozen=True)
class PostgresServer:
    """Where the PostgreSQL sandbox creates its databases. The password, if the server needs one,
    comes the way libpq takes it (PGPASSWORD, ~/.pgpass), never through a file of the sandbox."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"

    @classmethod
    def from_environment(cls) -> PostgresServer:
        """PGHOST, PGPORT and PGUSER when set, as psql reads them."""
        return cls(os.environ.get("PGHOST", cls.host), int(os.environ.get("PGPORT", cls.port)),
                   os.environ.get("PGUSER", cls.user))

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        return self.url("postgres")


@dataclass(frozen=True)
class InstanceStatus:
    environment: str
    port: int
    pid: int | None
    sha: str | None
    revision: str | None
    health: str


def render_environment(env: str, root: str, python: str, port: int) -> str:
    """The environment file of `env` for a sandbox at `root` (as the file will see it)."""
    values = {
        "env": env,
        "ENV": env.upper(),
        "root": root,
        "python": python,
        "port": str(port),
        "roles": '"team-lead", "product-owner"' if env == "production" else "",
        "staging_line": 'staging_environment = "staging"' if env == "production" else "",
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)


def database_url(root: Path, env: str, db: str, server: PostgresServer | None = None) -> str:
    if db == "sqlite":
        return f"sqlite:///{root / env / 'data' / 'jobapp.db'}"
    return (server or PostgresServer()).url(postgres_database_name(root, env))


def postgres_database_name(root: Path, env: str) -> str:
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return f"jobapp_sbx_{digest}_{env}"


def environment_files(root: Path) -> dict[str, Path]:
    return {env: root / "environments" / f"{env}.toml" for env in ENVIRONMENTS}


def up(
    root: Path = DEFAULT_ROOT,
    db: str = "sqlite",
    ports: dict[str, int] | None = None,
    python: Path | None = None,
    log=print,
    postgres: PostgresServer | None = None,
    edit: Callable[[str], str] | None = None,
    reset: bool = False,
    start: bool = True,
    hosts: int = 0,
) -> dict[str, EnvironmentConfig]:
    """Build (or bring back) the sandbox at `root`. `edit` passes each environment file's text through
    a function before it is written (the demo's short watch); `reset` rewrites files an operator edited;
    `start=False` prepares everything but starts no app. `hosts=N` (2 or more) makes production a fleet:
    N app hosts on loopback addresses of their own behind HAProxy (see `fleet_section`)."""
    if hosts == 1 or hosts < 0 or hosts > MAX_HOSTS:
        raise SandboxError(f"--hosts takes 2 to {MAX_HOSTS} (a fleet); leave it out for one host")
    root = root.resolve()
    ports = {**DEFAULT_PORTS, **(ports or {})}
    python = python or Path(sys.executable)
    postgres = postgres or PostgresServer.from_environment()
    root.mkdir(parents=True, exist_ok=True)
    origin = root / "origin.git"
    if not (origin / "HEAD").exists():
        from sample_app.history import HistoryError, build_origin

        partial = root / "origin.git.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            tags = build_origin(partial, now=datetime.now(timezone.utc))
        except HistoryError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SandboxError(f"building the release history failed: {exc}") from None
        partial.rename(origin)
        log(f"origin      {origin} ({', '.join(sorted(tags))})")
    files = GeneratedFiles(root, reset=reset, log=log)
    files.write(root / "sandbox.env", _secrets_text(root, db, postgres), mode=0o600)
    configs: dict[str, EnvironmentConfig] = {}
    for env, path in environment_files(root).items():
        text = render_environment(env, str(root), str(python), ports[env])
        if hosts and env == FLEET_ENVIRONMENT:
            text += fleet_section(root, ports[env], hosts)
        files.write(path, edit(text) if edit else text)
        configs[env] = config = load_environment_file(path)
        app_env = resolve_app_environment(config)
        _prepare_workspace(config, origin)
        for host in config.hosts:
            _prepare_workspace(host, origin)
        for instance in [config, *config.hosts]:  # with [dependencies] an app starts in its live environment
            _live_environment(instance)
        url = resolve_database_url(config)
        if url.startswith("postgresql"):
            _create_postgres_database(url)
        elif url.startswith("sqlite"):
            _use_wal(url)
        prepared = config.source.workspace.parent / "data" / ".prepared"
        # Migrated and seeded already, for this database and this checkout: nothing to do again. The
        # database is named relative to the sandbox, so a copied sandbox's SQLite files count as done.
        where = url.replace(str(root), "<sandbox>")
        done = f"{_sha256(where.encode())} {_git(config.source.workspace, 'rev-parse', 'HEAD')}"
        if not prepared.exists() or prepared.read_text() != done:
            _run_app(config, app_env, [str(python), "-m", "alembic", "upgrade", "head"], "migrate")
            _run_app(config, app_env, [str(python), "-m", "jobapp.seed", "--profile", env], "seed")
            prepared.write_text(done)
        if not start:
            log(f"{env:<11} prepared, not started ({make_url(url).get_backend_name()})")
            continue
        for instance in config.hosts or [config]:
            pid = _start(instance)
            where = f"{env}/{instance.host}" if instance.host else env
            log(f"{where:<11} {instance.service.base_url} pid {pid} ({make_url(url).get_backend_name()})")
        if config.fleet is not None:
            log(f"{env + '/lb':<11} {config.service.base_url} haproxy pid {_start_balancer(config)}, "
                f"{len(config.fleet.hosts)} hosts")
    return configs


def _live_environment(config: EnvironmentConfig) -> None:
    """With [dependencies]: the checkout's release environment built and live, as a deploy leaves it."""
    if config.dependencies is None:
        return
    from tasks.dependencies import ensure_environment, switch_environment
    from tasks.release_environments import live_environment, release_environment

    wanted = release_environment(config, config.app_dir())
    live = live_environment(config)
    if live is None or live.key != wanted.key:
        ensure_environment(config, config.app_dir())
        switch_environment.fn(config)


def _start(config: EnvironmentConfig) -> int:
    pid = running_pid(config)
    if pid is None:
        app_process.start(config, resolve_app_environment(config))
        pid = app_process.wait_for_pid_file(config, timeout=30)
        _wait_healthy(config, timeout=30)
    return pid


FLEET_ENVIRONMENT = "production"
MAX_HOSTS = 9


def host_address(port: int, number: int) -> str:
    """Host `number` (from 1) of a sandbox fleet: a loopback address of its own, the environment's port."""
    return f"127.0.0.{10 + number}:{port}"


def fleet_section(root: Path, port: int, hosts: int) -> str:
    """[fleet] for the sandbox's production: hosts web-1..web-N, each with its own checkout, processes,
    log and loopback address, sharing the database and the data directory (the maintenance flag, the
    documents) as hosts share them through a network volume; HAProxy on production's own address in
    front of them. [source] workspace stays the deploy's checkout: it is migrated from, never served."""
    env = FLEET_ENVIRONMENT
    lines = [
        "",
        "# A fleet: `deployctl sandbox up --hosts N` wrote this. Each host's worker polls the queue named",
        "# after it (`deployctl stack up` starts one per host here; on real hosts each host runs its own).",
        "[fleet.load_balancer]",
        'kind = "haproxy"',
        f'socket = "{root}/{env}/haproxy/admin.sock"',
        'backend = "app"',
        "drain_timeout_seconds = 30",
        "ready_timeout_seconds = 30",
        "",
        "[fleet.rollout]",
        "batch_size = 1",
        "canary_first = true",
        "pause_seconds = 0",
        "# A host's run may take a minute to start on a busy machine (wait-for-hosts says how long each took).",
        "start_timeout_seconds = 120",
        "worker_silence_seconds = 20",
    ]
    for number in range(1, hosts + 1):
        name, address = f"web-{number}", host_address(port, number)
        home = f"{root}/{env}/hosts/{name}"
        lines += [
            "",
            "[[fleet.hosts]]",
            f'name = "{name}"',
            f'address = "{address}"',
            f'workspace = "{home}/app"',
            f'work_queue = "{name}"',
            f'service = {{ pid_file = "{home}/run/gunicorn.pid", startup_log = "{home}/logs/app.log", '
            f'env = {{ JOBAPP_BIND = "{address}", JOBAPP_DATA_DIR = "{root}/{env}/data" }} }}',
        ]
    return "\n".join(lines) + "\n"


def haproxy_config(config: EnvironmentConfig) -> str:
    """HAProxy in front of the fleet: round robin, each host checked on its /api/health, up while it says
    ok or maintenance (a rollback's maintenance page is the app's, with its Retry-After, not the
    balancer's "no server available"), the runtime API on the file's socket.

    A host in rotation is checked every second; after a failed check, or while it is down (out of
    maintenance, a restarted host), every 200 ms: down after three failed checks, each given 2 s, up
    after two good ones, so a host put back is in rotation within half a second. Checking every host
    every 200 ms all the time kept the hosts and HAProxy at a fifth of a core at rest (6 % now)."""
    assert config.fleet is not None
    front = config.service.base_url.removeprefix("http://")
    servers = "\n".join(f"    server {host.name} {host.address} check inter 1s fastinter 200ms downinter 200ms fall 3 rise 2"
                         for host in config.fleet.hosts)
    home = config.fleet.load_balancer.socket.parent
    return f"""\
# Written by `deployctl sandbox up --hosts N`.
global
    stats socket {config.fleet.load_balancer.socket} mode 600 level admin
    pidfile {home / "haproxy.pid"}
defaults
    mode http
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A check answered slower than `inter` would fail without it: on a loaded machine the last host in
    # rotation was marked down while it served, and users got the balancer's own 503.
    timeout check 2s
frontend web
    bind {front}
    default_backend {config.fleet.load_balancer.backend}
backend {config.fleet.load_balancer.backend}
    balance roundrobin
    option httpchk GET {config.health.api_path}
    http-check expect rstring status.:.(ok|maintenance)
{servers}
"""


def _start_balancer(config: EnvironmentConfig) -> int:
    from tasks.load_balancer import HAProxy
    from tasks.waiting import wait_until

    assert config.fleet is not None
    binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if binary is None:
        raise SandboxError("a sandbox fleet needs HAProxy: install it (Debian: apt-get install haproxy)")
    home = config.fleet.load_balancer.socket.parent
    home.mkdir(parents=True, exist_ok=True)
    pid = _balancer_pid(config)
    if pid is not None:
        return pid
    (home / "haproxy.cfg").write_text(haproxy_config(config))
    result = run(Command.of([binary, "-D", "-f", str(home / "haproxy.cfg")], cwd=home, timeout=30),
                 step="start haproxy", error=one_line(SandboxError), advice=TOOL_ADVICE)
    if not result.ok:
        raise SandboxError(f"haproxy did not start: {result.stderr.strip()[-1500:]}")
    balancer = HAProxy(config.fleet.load_balancer.socket, config.fleet.load_balancer.backend)
    wait_until(lambda: all(s.in_rotation for s in balancer.servers()) or None, 30,
               "HAProxy to see every sandbox host up", interval=0.1,
               on_timeout=lambda: SandboxError(f"HAProxy does not see every host up within 30 s: "
                                               f"{', '.join(s.describe() for s in balancer.servers())}"))
    pid = _balancer_pid(config)
    if pid is None:
        raise SandboxError(f"haproxy started but wrote no pid file in {home}")
    return pid


def _balancer_pid(config: EnvironmentConfig) -> int | None:
    from tasks.process_state import is_alive, read_pid

    assert config.fleet is not None
    pid = read_pid(config.fleet.load_balancer.socket.parent / "haproxy.pid")
    return pid if pid is not None and is_alive(pid) else None


class GeneratedFiles:
    """Files `up` writes that the operator may edit afterwards: `generated.json` keeps the sha256 of
    what was written last, and a file whose content no longer matches it is the operator's."""

    def __init__(self, root: Path, reset: bool, log: Callable[[str], object]) -> None:
        self.record = root / GENERATED
        self.reset = reset
        self.log = log
        try:
            self.written: dict[str, str] = json.loads(self.record.read_text())
        except (FileNotFoundError, ValueError):
            self.written = {}
        self.root = root

    def write(self, path: Path, text: str, mode: int = 0o644) -> None:
        key = str(path.relative_to(self.root))
        if path.exists() and not self.reset:
            current = _sha256(path.read_bytes())
            if current == _sha256(text.encode()):
                return
            if current != self.written.get(key):
                self.log(f"kept        {path} (edited since `sandbox up` wrote it; `deployctl sandbox up "
                         "--reset` writes it afresh)")
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(partial, path)
        self.written[key] = _sha256(text.encode())
        self.record.write_text(json.dumps(self.written, indent=2, sort_keys=True) + "\n")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def down(root: Path = DEFAULT_ROOT, log=print) -> list[int]:
    stopped = []
    for env, path in environment_files(root.resolve()).items():
        if not path.exists():
            continue
        config = load_environment_file(path)
        if config.fleet is not None:
            balancer = _balancer_pid(config)
            if balancer is not None:
                os.kill(balancer, signal.SIGTERM)
                stopped.append(balancer)
                log(f"{env + '/lb':<11} stopped haproxy pid {balancer}")
        for instance in config.hosts or [config]:
            where = f"{env}/{instance.host}" if instance.host else env
            pid = app_process.stop(instance)
            if pid is not None:
                stopped.append(pid)
                log(f"{where:<11} stopped pid {pid}")
            else:
                log(f"{where:<11} not running")
    return stopped


def status(root: Path = DEFAULT_ROOT) -> list[InstanceStatus]:
    result = []
    for env, path in environment_files(root.resolve()).items():
        if not path.exists():
            continue
        config = load_environment_file(path)
        try:
            revision = database_revision(resolve_database_url(config))
        except DeployError as exc:
            revision = f"unreadable ({exc.cause})"
        for instance in [config, *config.hosts]:
            port = int(instance.service.base_url.rsplit(":", 1)[1])
            workspace = instance.source.workspace
            sha = _git(workspace, "rev-parse", "HEAD") if workspace.exists() else None
            answer = probe(instance.service.base_url + instance.health.api_path, timeout=3)
            if answer.body is not None:
                health = (f"{answer.body.get('status')} (HTTP {answer.status_code}, serves "
                          f"{str(answer.body.get('version'))[:12]})")
            else:
                health = answer.describe()
            name = f"{env}/{instance.host}" if instance.host else (f"{env}/lb" if config.fleet else env)
            pid = _balancer_pid(config) if config.fleet and not instance.host else running_pid(instance)
            result.append(InstanceStatus(name, port, pid, sha, revision, health))
    return result


def _secrets_text(root: Path, db: str, postgres: PostgresServer) -> str:
    lines = [f"JOBAPP_{env.upper()}_DATABASE_URL={database_url(root, env, db, postgres)}" for env in ENVIRONMENTS]
    return ("# Written by `deployctl sandbox up`. Secret values live here, never in environment files.\n"
            + "\n".join(lines) + "\n")


def _prepare_workspace(config: EnvironmentConfig, origin: Path) -> None:
    workspace = config.source.workspace
    if not (workspace / ".git").exists():
        workspace.parent.mkdir(parents=True, exist_ok=True)
        _git(workspace.parent, "clone", "--quiet", "--no-checkout", "--", str(origin), workspace.name)
        _git(workspace, "checkout", "--quiet", "--detach", "v1")
    elif _git(workspace, "remote", "get-url", config.source.remote) != str(origin):
        # A sandbox moved or copied to another directory: its clones follow its origin.
        _git(workspace, "remote", "set-url", config.source.remote, str(origin))
    for sub in ("data", "run", "logs", "backups"):
        (workspace.parent / sub).mkdir(exist_ok=True)


def _use_wal(url: str) -> None:
    """WAL mode for the sandbox's SQLite database, as production SQLite usually runs: there a backup
    must see writes not yet checkpointed into the main file, and the sandbox's deploys should meet
    that. The mode is kept in the file, so the app and every tool open it in WAL from then on."""
    path = make_url(url).database
    try:
        with closing(sqlite3.connect(str(path), timeout=15)) as conn:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.Error as exc:
        raise SandboxError(f"setting WAL mode on {path} failed ({exc}); stop what holds the database "
                           "(`deployctl sandbox down`) and run `sandbox up` again") from None
    if mode != "wal":
        raise SandboxError(f"{path} stayed in journal mode {mode!r}: its file system may not support WAL "
                           "(shared memory); put the sandbox on a local disk")


def _create_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    target = make_url(url)
    engine = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                  {"n": target.database}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        engine.dispose()


def drop_postgres_databases(root: Path) -> None:
    """Drop the sandbox's PostgreSQL databases, on the server its sandbox.env names."""
    from sqlalchemy import create_engine, text

    for env, path in environment_files(root.resolve()).items():
        if not path.exists():
            continue
        config = load_environment_file(path)
        url = resolve_database_url(config)
        if not url.startswith("postgresql"):
            continue
        target = make_url(url)
        engine = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                               connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        finally:
            engine.dispose()


def _run_app(config: EnvironmentConfig, app_env: dict[str, str], argv: list[str], what: str) -> None:
    command = Command.of(argv, cwd=config.source.workspace, env=child_env(app_env), timeout=300, name=what)
    result = run(command, step=f"{what} of {config.name}", error=one_line(SandboxError), advice=TOOL_ADVICE)
    if not result.ok:
        raise SandboxError(f"{what} of {config.name} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")


def _wait_healthy(config: EnvironmentConfig, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = config.service.base_url + config.health.path
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SandboxError(f"{config.name} did not answer {url} within {timeout:.0f} s; see {config.service.startup_log}")


def _git(cwd: Path, *args: str) -> str:
    result = run(Command.of(["git", *args], cwd=cwd, timeout=60), step=f"git {args[0]}", error=one_line(SandboxError),
                 advice=TOOL_ADVICE)
    if not result.ok:
        raise SandboxError(f"git {args[0]} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()
