"""The install command of the tests' release environments. There is no package index here: the
release's pinned packages come from a directory of wheels (PIP_FIND_LINKS, PIP_NO_INDEX), and the
ones every release shares (gunicorn, its ASGI worker) from the orchestrator's own environment, linked
by a .pth file, with a `bin/gunicorn` script as pip would write one.

    python install_shared.py <the new environment's python>      (in the release's app directory)
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

target = Path(sys.argv[1])
purelib = subprocess.run([str(target), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True).stdout.strip()
Path(purelib, "shared.pth").write_text(sysconfig.get_path("purelib") + "\n")
script = target.parent / "gunicorn"
script.write_text(f"#!{target}\nimport sys\nfrom gunicorn.app.wsgiapp import run\nsys.exit(run())\n")
script.chmod(0o755)
if Path("requirements.txt").exists():  # an app with no packages of its own (jobapp) needs only the shared ones
    sys.exit(subprocess.run([sys.executable, "-m", "pip", "--python", str(target), "install", "--quiet",
                             "--disable-pip-version-check", "-r", "requirements.txt"]).returncode)
