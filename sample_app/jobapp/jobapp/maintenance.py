"""Maintenance mode: while ``$JOBAPP_DATA_DIR/maintenance`` exists, the app answers 503.

The flag is a file checked on every request, so every worker sees a switch at once.
Its content, when an integer, is the Retry-After in seconds.

Usage: ``python -m jobapp.maintenance on|off [--retry-after N]``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from jobapp.settings import Settings

DEFAULT_RETRY_AFTER = 30
# Operators need metrics, and health reports maintenance itself, so both stay reachable.
EXEMPT_PATHS = frozenset({"/metrics", "/api/health"})


def retry_after(flag: Path) -> int | None:
    """Seconds clients should wait, or None when maintenance is off."""
    try:
        content = flag.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError:
        # The flag exists but cannot be read: still maintenance.
        return DEFAULT_RETRY_AFTER
    return int(content) if content.isdigit() else DEFAULT_RETRY_AFTER


def enable(flag: Path, seconds: int = DEFAULT_RETRY_AFTER) -> None:
    flag.parent.mkdir(parents=True, exist_ok=True)
    staging = flag.with_name(f".{flag.name}.{os.getpid()}")
    staging.write_text(f"{seconds}\n", encoding="utf-8")
    # Rename so a worker never reads a half-written number.
    os.replace(staging, flag)


def disable(flag: Path) -> None:
    flag.unlink(missing_ok=True)


class MaintenanceMiddleware:
    def __init__(self, app: ASGIApp, flag: Path) -> None:
        self.app = app
        self.flag = flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in EXEMPT_PATHS:
            seconds = retry_after(self.flag)
            if seconds is not None:
                response = JSONResponse(
                    {"detail": "jobapp is in maintenance", "retry_after": seconds},
                    status_code=503,
                    headers={"Retry-After": str(seconds)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobapp.maintenance", description="Switch maintenance mode on or off."
    )
    parser.add_argument("state", choices=("on", "off"))
    parser.add_argument("--retry-after", type=int, default=DEFAULT_RETRY_AFTER, metavar="N")
    args = parser.parse_args(argv)
    if args.retry_after < 0:
        parser.error("--retry-after must be 0 or more seconds")
    flag = Settings.from_env().maintenance_file
    if args.state == "on":
        enable(flag, args.retry_after)
        print(f"maintenance on ({flag}, Retry-After {args.retry_after}s)")
    else:
        disable(flag)
        print(f"maintenance off ({flag} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
