"""deployctl: the command line beside the Prefect UI.

    deployctl sandbox up|down|status [--dir DIR] [--db sqlite|postgres]
    deployctl check ENV          validate an environment file and check what it can reach, changing nothing

Exit codes: 0 fine, 1 a check failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from deployments.errors import DeployError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployctl", description="Production deployment orchestrator")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = commands.add_parser("sandbox", help="the sample system's staging + production on loopback")
    sandbox.add_argument("action", choices=["up", "down", "status"])
    sandbox.add_argument("--dir", type=Path, default=None, help="sandbox directory (default .sandbox/)")
    sandbox.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                         help="database of both environments (default sqlite)")
    sandbox.set_defaults(handler=_sandbox)

    check = commands.add_parser("check", help="validate an environment file and check what it can reach")
    check.add_argument("environment")
    check.set_defaults(handler=_check)
    return parser


def _sandbox(args: argparse.Namespace) -> int:
    from sample_app import sandbox

    root = args.dir or sandbox.DEFAULT_ROOT
    if args.action == "up":
        try:
            sandbox.up(root, db=args.db)
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
    print(f"{'ENV':<11} {'PORT':<6} {'PID':<8} {'SHA':<12} {'DB':<8} HEALTH")
    for row in rows:
        print(f"{row.environment:<11} {row.port:<6} {row.pid or '-':<8} {(row.sha or '-')[:12]:<12} "
              f"{row.revision or '-':<8} {row.health}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from deployments.checks import check_environment
    from deployments.config import load_environment

    config = load_environment(args.environment)
    print(f"environment file: {config.name} is valid")
    failed = 0
    for result in check_environment(config):
        mark = "ok  " if result.ok else "FAIL"
        print(f"  {mark} {result.name:<22} {result.detail}")
        failed += not result.ok
    if failed:
        print(f"{failed} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
