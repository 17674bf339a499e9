"""Which commit this process serves."""

from __future__ import annotations

import subprocess
from pathlib import Path

UNKNOWN = "unknown"


def git_version(app_dir: Path) -> str:
    """The SHA of HEAD when ``app_dir`` is the root of a git checkout, else ``"unknown"``.

    The root check matters: an app dir nested inside another repository must not report
    that repository's commit.
    """
    try:
        result = subprocess.run(
            ["git", "-C", str(app_dir), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    lines = result.stdout.split()
    if len(lines) != 2 or Path(lines[0]).resolve() != app_dir.resolve():
        return UNKNOWN
    return lines[1]
