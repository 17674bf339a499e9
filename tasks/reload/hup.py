"""reload = "hup": reload in place (new workers, same master), done when the new workers accept and
the old ones have drained. A release that cannot import takes the app down (and says so), which is
why `preflight_command` and the canary run first."""

from __future__ import annotations

import os
import signal

from deployments.errors import ServiceError
from tasks.process_state import accepts, children, is_alive, socket_inodes
from tasks.reload.strategy import Reload


def reload_in_place(reload: Reload) -> int:
    before = set(children(reload.old))
    os.kill(reload.old, signal.SIGHUP)
    listeners = socket_inodes(reload.old)

    def replaced() -> bool:
        # Done when the new workers accept and the old ones, which drain what they serve, are gone.
        current = set(children(reload.old))
        fresh = current - before
        return not current & before and len(fresh) >= reload.workers and all(
            accepts(pid, listeners, 1.5) for pid in fresh)

    reload.wait(lambda: replaced() or not is_alive(reload.old), "new workers after HUP")
    if not is_alive(reload.old):
        raise ServiceError(reload.step, "the application exited while its workers reloaded the new release "
                           "(reload = \"hup\" has no old master to fall back on)",
                           f"read {reload.config.service.startup_log}; start the previous release by hand or roll back")
    return reload.old
