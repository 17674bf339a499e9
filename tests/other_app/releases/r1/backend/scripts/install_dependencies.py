"""Install the backend's dependencies (requirements.txt) into the interpreter that runs this script.

    python scripts/install_dependencies.py

Run in the backend's directory by the environment that is being built for a release. Hosts without
network access keep the packages every service on them uses in one shared site-packages directory,
named by SHARED_SITE_PACKAGES: it is linked into the environment (a .pth file) rather than installed
again, so pip finds those requirements satisfied and installs only the others, from the wheel
directory PIP_FIND_LINKS names (with PIP_NO_INDEX=1).
"""

import os
import subprocess  # nosec B404: runs pip, with this interpreter
import sys
import sysconfig
from pathlib import Path

# What pip would write for gunicorn's console script had it installed gunicorn here.
GUNICORN_SCRIPT = """#!{python}
import sys

from gunicorn.app.wsgiapp import run

if __name__ == "__main__":
    sys.exit(run())
"""


def main() -> int:
    site_packages = Path(sysconfig.get_paths()["purelib"])
    shared = os.environ.get("SHARED_SITE_PACKAGES")
    if shared:
        (site_packages / "shared-site-packages.pth").write_text(shared + "\n")
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-r", "requirements.txt"]
    result = subprocess.run(pip, check=False)  # nosec B603: this interpreter's pip, no shell
    if result.returncode != 0:
        return result.returncode
    script = Path(sys.executable).parent / "gunicorn"
    if not script.exists():  # gunicorn came from the shared directory: no console script was made for it
        script.write_text(GUNICORN_SCRIPT.format(python=sys.executable))
        script.chmod(0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
