import os
import sys

import greetlib
from fastapi import APIRouter

router = APIRouter(prefix="/utils", tags=["utils"])

# Where this process imported its packages from, as it started: the environment it runs in.
ENVIRONMENT = os.path.realpath(sys.prefix)
GREETLIB_FILE = os.path.realpath(greetlib.__file__)


@router.get("/health-check/")
async def health_check() -> bool:
    return True


@router.get("/runtime/")
async def runtime() -> dict[str, str]:
    return {"greetlib": greetlib.__version__, "greeting": greetlib.greet("inventory"),
            "greetlib_file": GREETLIB_FILE, "environment": ENVIRONMENT}
