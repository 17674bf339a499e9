"""deployctl: the command line beside the Prefect UI.

    deployctl sandbox up|down|status [--dir DIR] [--db sqlite|postgres]
    deployctl check ENV          validate an environment file and check what it can reach, changing nothing
    deployctl approve RUN_ID --as NAME --role ROLE [--reject] [--comment TEXT]
    deployctl decide RUN_ID --as NAME --restore|--downgrade-by-hand|--keep-release [--comment TEXT]
                                 answer a rollback that asks before a restore that would discard data
    deployctl follow RUN_ID      a run's steps as they start and end, until it ends
    deployctl status ENV         the live release and the last deploys and rollbacks, from the ledger
    deployctl dora ENV [--days N] [--json] [--artifact]
                                 DORA figures from the ledger; --artifact also writes the markdown
                                 artifact dora-ENV to the Prefect API named by PREFECT_API_URL
    deployctl stack up|down      a local Prefect server, work pool, deployments and worker
    deployctl demo | stop        the whole story on the sandbox; stop everything it started

Exit codes: 0 fine, 1 a check failed, 2 bad input or configuration.

The commands that talk to Prefect (approve, decide, follow, dora --artifact) use the server named by
PREFECT_API_URL; when it is not set and the local server of `make deploy` / `make demo` is up, they
use that one and say so. Environment files come from DEPLOY_ENVIRONMENTS_DIR, else deployments/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence
from uuid import UUID

from deployments.errors import DeployError

if TYPE_CHECKING:  # imported where used: `deployctl --help` need not load SQLAlchemy
    from records.ledger import Ledger


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `deployctl status production | head`: the reader has gone; say nothing more, like other tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _prefect_api(command: str) -> bool:
    """PREFECT_API_URL, or the local server of `make deploy` when it is up; False (and why) without
    either, since Prefect would otherwise start a temporary server of its own and lose what we write."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return True
    from deployctl.stack import Stack

    local = Stack()
    if local.healthy():
        os.environ["PREFECT_API_URL"] = local.api_url
        print(f"{command}: PREFECT_API_URL is not set; using the local server at {local.api_url}", file=sys.stderr)
        return True
    print(f"error: {command}: PREFECT_API_URL is not set and no local Prefect server is up. Set it to your "
          "server's API (e.g. http://127.0.0.1:4200/api), or start the local one with `make deploy`",
          file=sys.stderr)
    return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployctl", description="Production deployment orchestrator")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = commands.add_parser("sandbox", help="the sample system's staging + production on loopback")
    sandbox.add_argument("action", choices=["up", "down", "status"])
    sandbox.add_argument("--dir", type=Path, default=None, help="sandbox directory (default .sandbox/)")
    sandbox.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                         help="database of both environments (default sqlite)")
    sandbox.add_argument("--pg-host", help="--db postgres: the server's host (default $PGHOST or 127.0.0.1)")
    sandbox.add_argument("--pg-port", type=int, help="--db postgres: its port (default $PGPORT or 5432)")
    sandbox.add_argument("--pg-user", help="--db postgres: a role that may create databases (default $PGUSER "
                                           "or postgres; its password from PGPASSWORD or ~/.pgpass)")
    sandbox.add_argument("--hosts", type=int, default=0, metavar="N",
                         help="up: production as a fleet of N hosts (2-9) on loopback behind HAProxy")
    sandbox.add_argument("--reset", action="store_true",
                         help="up: write the environment files and sandbox.env afresh, discarding your edits")
    sandbox.set_defaults(handler=_sandbox)

    init = commands.add_parser("init", help="read an app's repository and write a first staging and production "
                                            "file for it (guesses marked)")
    init.add_argument("repository", nargs="?", type=Path, default=Path("."), help="the app's git checkout (default .)")
    init.add_argument("--dir", type=Path, default=Path("environments"),
                      help="where to write the files (default ./environments); then DEPLOY_ENVIRONMENTS_DIR=DIR")
    init.add_argument("--env", dest="environments", action="append", metavar="NAME",
                      help="an environment to write (repeatable; default staging and production)")
    init.set_defaults(handler=_init)

    check = commands.add_parser("check", help="validate an environment file and check what it can reach")
    check.add_argument("environment")
    check.set_defaults(handler=_check)

    dependencies = commands.add_parser("dependencies", help="build (or reuse) the environment of the workspace's "
                                                            "release ([dependencies]); make it live when none is")
    dependencies.add_argument("environment")
    dependencies.add_argument("--activate", action="store_true",
                              help="make it live even though another one is (the app then needs a reload)")
    dependencies.set_defaults(handler=_dependencies)

    approve = commands.add_parser("approve", help="answer a deploy that waits for approval")
    approve.add_argument("run_id", help="the flow run id (shown in the UI and the run's log)")
    approve.add_argument("--as", dest="approver", required=True, help="your full name")
    approve.add_argument("--role", required=True, choices=["team-lead", "product-owner"])
    approve.add_argument("--reject", action="store_true", help="stop the deploy; nothing changes")
    approve.add_argument("--comment", default="", help="why (shown in the summary)")
    approve.set_defaults(handler=_approve)

    decide = commands.add_parser("decide", help="answer a rollback that waits before a restore that would lose data")
    decide.add_argument("run_id", help="the rollback's flow run id (in its alert and its log)")
    decide.add_argument("--as", dest="decided_by", required=True, help="your full name")
    choice = decide.add_mutually_exclusive_group(required=True)
    choice.add_argument("--restore", dest="decision", action="store_const", const="restore",
                        help="restore the backup, discarding what was written since")
    choice.add_argument("--downgrade-by-hand", dest="decision", action="store_const", const="downgrade-by-hand",
                        help="stop; maintenance stays on while you undo the schema yourself")
    choice.add_argument("--keep-release", dest="decision", action="store_const", const="keep-release",
                        help="resume traffic on the failed release; nothing is undone")
    decide.add_argument("--comment", default="", help="why (shown in the notifications)")
    decide.set_defaults(handler=_decide)

    follow = commands.add_parser("follow", help="a run's steps as they start and end, until it ends")
    follow.add_argument("run_id", help="the flow run id of a deploy, rollback or watch")
    follow.add_argument("--timeout", type=float, default=7200, help="seconds to follow at most (default 7200)")
    follow.set_defaults(handler=_follow)

    status = commands.add_parser("status", help="the live release and the last deploys and rollbacks of an "
                                                "environment")
    status.add_argument("environment")
    status.add_argument("--limit", type=int, default=10)
    status.set_defaults(handler=_status)

    dora = commands.add_parser("dora", help="DORA figures of an environment, from the ledger")
    dora.add_argument("environment")
    dora.add_argument("--days", type=_days, default=30, help="the window: this many days before now (default 30)")
    dora.add_argument("--json", action="store_true", help="print the figures as JSON")
    dora.add_argument("--artifact", action="store_true",
                      help="also write them as the markdown artifact dora-ENV (needs PREFECT_API_URL)")
    dora.set_defaults(handler=_dora)

    stack = commands.add_parser("stack", help="a local Prefect server, work pool, deployments and worker")
    stack.add_argument("action", choices=["up", "down"])
    stack.set_defaults(handler=_stack)

    demo = commands.add_parser("demo", help="run the whole story on the sandbox (make demo)")
    demo.add_argument("--hosts", type=int, default=0, metavar="N",
                      help="the fleet story instead: production on N hosts behind HAProxy (make demo-fleet)")
    demo.set_defaults(handler=lambda args: _demo(args.hosts))
    stop = commands.add_parser("stop", help="stop the sandbox apps, the worker and the server (make stop)")
    stop.set_defaults(handler=lambda args: _stop())
    return parser


def _sandbox(args: argparse.Namespace) -> int:
    from sample_app import sandbox

    root = args.dir or sandbox.DEFAULT_ROOT
    if args.action == "up":
        server = sandbox.PostgresServer.from_environment()
        server = sandbox.PostgresServer(args.pg_host or server.host, args.pg_port or server.port,
                                        args.pg_user or server.user)
        try:
            sandbox.up(root, db=args.db, postgres=server, reset=args.reset, hosts=args.hosts)
        except sandbox.SandboxError as exc:
            print(f"error: sandbox up: {exc}", file=sys.stderr)
            return 1
        print(f"environment files: {root / 'environments'}")
        return 0
    if args.action == "down":
        sandbox.down(root)
        return 0
    rows = sandbox.status(root)
    if not rows:
        print(f"no sandbox at {root}: run `deployctl sandbox up`")
        return 1
    print(f"{'ENV':<18} {'PORT':<6} {'PID':<8} {'SHA':<12} {'DB':<8} HEALTH")
    for row in rows:
        print(f"{row.environment:<18} {row.port:<6} {row.pid or '-':<8} {(row.sha or '-')[:12]:<12} "
              f"{row.revision or '-':<8} {row.health}")
    return 0


def _init(args: argparse.Namespace) -> int:
    from deployctl.init import write_environment_files
    from deployments.config import ENVIRONMENT_NAME

    names = tuple(args.environments or ("staging", "production"))
    bad = [name for name in names if not ENVIRONMENT_NAME.fullmatch(name)]
    if bad:
        print(f"init: {', '.join(bad)} cannot name an environment: lowercase letters, digits and '-', "
              "starting with a letter", file=sys.stderr)
        return 2
    written = write_environment_files(args.repository, args.dir, names)
    for path in written:
        print(f"wrote {path}")
    dependencies = any("[dependencies]" in path.read_text() for path in written if path.suffix == ".toml")
    print(f"Edit the lines marked GUESS and TODO, put each database URL in {args.dir / 'app.env'}, then:\n"
          f"  export DEPLOY_ENVIRONMENTS_DIR={args.dir.resolve()}\n"
          + (f"  deployctl dependencies {names[0]}     # the live release's environment, to start the app from\n"
             if dependencies else "")
          + f"  deployctl check {names[0]}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from deployctl.checks import check_environment
    from deployments.config import load_environment

    config = load_environment(args.environment)
    print(f"environment file: {config.name} is valid")
    results = check_environment(config)
    for result in results:
        mark = "warn" if result.warning else "ok  " if result.ok else "FAIL"
        print(f"  {mark} {result.name:<22} {result.detail}")
    failed = sum(not result.ok for result in results)
    print(f"{failed} of {len(results)} checks failed" if failed else f"all {len(results)} checks passed")
    return 1 if failed else 0


def _dependencies(args: argparse.Namespace) -> int:
    """Before the first deploy with [dependencies] (or after changing it): the workspace's release gets
    its environment, and `current` links it when nothing is live yet, so the app can be started from it."""
    from deployments.config import load_environment
    from tasks.dependencies import ensure_environment, switch_environment
    from tasks.release_environments import live_environment

    config = load_environment(args.environment)
    if config.dependencies is None:
        print(f"dependencies: {config.name} has no [dependencies]; the app runs in {config.service.python}",
              file=sys.stderr)
        return 2
    environment, seconds = ensure_environment(config, config.app_dir())
    print(f"environment {environment.key} " + ("reused" if seconds is None else f"built in {seconds:.1f} s")
          + f" for the workspace's release, in {environment.path}")
    live = live_environment(config)
    if live is not None and live.key != environment.key and not args.activate:
        print(f"current still links {live.key}: --activate makes {environment.key} live (then reload the app)")
        return 0
    print(switch_environment.fn(config, environment.key))
    print(f"the app's interpreter: {config.service.python}")
    return 0


def _stack(args: argparse.Namespace) -> int:
    from deployctl.stack import Stack

    stack = Stack()
    stack.up() if args.action == "up" else stack.down()
    return 0


def _demo(hosts: int = 0) -> int:
    from deployctl.demo import demo

    return demo(hosts=hosts)


def _stop() -> int:
    from deployctl.stack import Stack
    from sample_app import sandbox

    sandbox.down()
    if (sandbox.FLEET_ROOT / "environments").exists():
        sandbox.down(sandbox.FLEET_ROOT)
    Stack().down()
    return 0


def _flow_run(text: str, command: str) -> UUID | None:
    """A flow run id as typed, and a server to ask about it; None once the error is said."""
    try:
        run_id = UUID(text)
    except ValueError:
        print(f"error: {command}: {text!r} is not a flow run id. Copy it from the run's page or log", file=sys.stderr)
        return None
    return run_id if _prefect_api(command) else None


def _paused_run(text: str, command: str, key: str, waiting_for: str) -> tuple[UUID, str] | int:
    """The run `text` names and its name, when it is paused at a pause whose key starts with `key`;
    otherwise the exit code, once the error is said."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    run_id = _flow_run(text, command)
    if run_id is None:
        return 2
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            print(f"error: {command}: no flow run {run_id}. Check the id and PREFECT_API_URL", file=sys.stderr)
            return 2
    pause = str(getattr(run.state.state_details, "pause_key", "") or "") if run.state is not None else ""
    if run.state is None or not run.state.is_paused() or not pause.startswith(key):
        state = run.state.name if run.state else "unknown"
        print(f"error: {command}: run {run.name} is {state}, not waiting for {waiting_for}", file=sys.stderr)
        return 1
    return run_id, run.name


def _approve(args: argparse.Namespace) -> int:
    from prefect.flow_runs import resume_flow_run

    found = _paused_run(args.run_id, "approve", "approval", "approval")
    if isinstance(found, int):
        return found
    run_id, name = found
    decision = "reject" if args.reject else "approve"
    resume_flow_run(run_id, run_input={"approver": args.approver, "role": args.role, "decision": decision,
                                       "comment": args.comment})
    print(f"{'rejected' if args.reject else 'approved'} {name} as {args.approver} ({args.role})")
    return 0


def _decide(args: argparse.Namespace) -> int:
    from prefect.flow_runs import resume_flow_run

    found = _paused_run(args.run_id, "decide", "data-loss-decision", "a decision on a restore")
    if isinstance(found, int):
        return found
    run_id, name = found
    resume_flow_run(run_id, run_input={"decision": args.decision, "decided_by": args.decided_by,
                                       "comment": args.comment})
    print(f"{args.decision}: answered {name} as {args.decided_by}")
    return 0


def _follow(args: argparse.Namespace) -> int:
    from prefect.exceptions import ObjectNotFound

    from deployctl.follow import follow

    run_id = _flow_run(args.run_id, "follow")
    if run_id is None:
        return 2
    try:
        run = follow(run_id, timeout=args.timeout)
    except ObjectNotFound:
        print(f"error: follow: no flow run {run_id}. Check the id and PREFECT_API_URL", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"follow: {exc}", file=sys.stderr)
        return 1
    print(f"{run.name}: {run.state.name}")
    return 0 if run.state.is_completed() else 1


def _status(args: argparse.Namespace) -> int:
    from deployments.config import load_environment
    from deployments.errors import DeployError
    from deployments.secrets import resolve_database_url
    from tasks.health import probe
    from records.ledger import Ledger
    from tasks.migrations import database_revision
    from tasks.served_version import served_version
    from tasks.source import current_sha

    config = load_environment(args.environment)
    ledger = Ledger.for_state_dir(config.state_dir)
    live_sha = current_sha(config.source.workspace)
    revision = database_revision(resolve_database_url(config))
    answer = probe(config.service.base_url + config.health.api_path, config.health.timeout_seconds)
    try:
        served = served_version(config, answer.body, "status").describe("serves")
    except DeployError as exc:
        served = f"serving version not verified: {exc.cause}"
    last_good = ledger.last_succeeded(config.name)
    print(f"{config.name}: live {live_sha[:12]} ({served}, health "
          f"{(answer.body or {}).get('status', answer.describe())}), database at {revision}")
    if last_good is not None:
        print(f"last good release: {last_good.ref} {str(last_good.target_sha)[:12]} at "
              f"{last_good.finished_at:%Y-%m-%d %H:%M:%S}")
    if config.fleet is not None:
        print(_fleet_table(config))
    for line in _history(ledger, config.name, args.limit) if args.limit > 0 else []:
        print(line)
    return 0


def _fleet_table(config: Any) -> str:
    """Each host: what it serves and how, by its own health answer; what the balancer sees of it. A
    fleet on more than one release is said so, never left for the reader to spot."""
    from tasks.fleet import fleet_status

    rows = fleet_status(config)
    lines = [f"\n{'HOST':<12} {'ADDRESS':<26} {'SERVES':<13} {'HEALTH':<12} LOAD BALANCER"]
    lines += [f"{r['host']:<12} {r['address']:<26} {r['serves']:<13} {r['health']:<12} {r['balancer']}" for r in rows]
    releases = sorted({r["serves"] for r in rows})
    if len(releases) > 1:
        lines.append(f"MIXED: the hosts serve {len(releases)} releases ({', '.join(releases)}); run "
                     f"rollback/{config.name} (or deploy again) to bring them onto one")
    return "\n".join(lines)


def _history(ledger: Ledger, environment: str, limit: int) -> list[str]:
    """The last runs that wrote to the ledger, deploys and rollbacks alike, newest first. A rollback
    says which release it undoes and, if it failed, the step where it did: that is where an operator
    picks up."""
    from records.dora import is_rollback_run

    lines = [f"\n{'ID':<5} {'STARTED (UTC)':<20} {'KIND':<16} {'REF':<14} {'SHA':<13} {'OUTCOME':<16} "
             f"{'PHASE / STEP':<34} {'WATCH':<13} RUN"]
    for release in ledger.history(environment, limit=limit):
        if is_rollback_run(release):
            kind = f"rollback of #{release.rollback_of}" if release.rollback_of else "rollback"
            where = release.failed_step or "-"
        else:
            kind, where = "deploy", release.failed_step or release.phase
        outcome = release.outcome + (" (dry)" if release.dry_run else "")
        watch = (release.watch or {}).get("outcome", "-")
        lines.append(f"{release.id:<5} {release.started_at:%Y-%m-%d %H:%M:%S}  {kind:<16} {release.ref[:14]:<14} "
                     f"{(release.target_sha or '-')[:12]:<13} {outcome:<16} {where:<34} {watch:<13} "
                     f"{release.flow_run_name or '-'}")
    return lines


def _days(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days of at least 1")
    return int(value)


def _dora(args: argparse.Namespace) -> int:
    import json

    from deployments.config import load_environment
    from records.dora import artifact_key, dora_figures, publish_dora_artifact, render_table
    from records.ledger import Ledger

    config = load_environment(args.environment)
    if args.artifact and not _prefect_api("dora --artifact"):
        return 2
    ledger = Ledger.for_state_dir(config.state_dir)
    figures = dora_figures(ledger, config.name, days=args.days, target=config.metrics.success_target)
    if args.json:
        print(json.dumps(figures.as_dict(), indent=2))
    else:
        print(render_table(figures), end="")
    if args.artifact:
        import httpx

        try:
            artifact_id = publish_dora_artifact(figures)
        except httpx.HTTPError as exc:
            print(f"error: dora --artifact: the Prefect API did not take the artifact ({exc}). "
                  "Check that the server at PREFECT_API_URL is up", file=sys.stderr)
            return 1
        print(f"artifact {artifact_key(config.name)} written ({artifact_id})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
