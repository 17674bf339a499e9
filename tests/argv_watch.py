"""Every command line on this machine while it runs, searched for a secret: a child's argv is readable
by anyone (/proc/PID/cmdline), so a password passed there has leaked.

Run as its own process (`python -m tests.argv_watch OUT`, the secret on stdin, never in its own argv),
so its polling neither holds the GIL of the tests it watches nor competes with them more than it must:
it lists /proc every few milliseconds, and reads a command line only while the process is young (a
fork shows its parent's argv until it execs; a process rarely execs again after its first second).
Each line `report` on stdin writes, as JSON to OUT, the programs seen so far and every command line
that held the secret, then answers `ok` on stdout; it stops when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

YOUNG_SECONDS = 2.0
INTERVAL_SECONDS = 0.003


class Watch:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.seen: set[str] = set()
        self.hits: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        first_seen: dict[str, float] = {}
        while not self.stop.wait(INTERVAL_SECONDS):
            now = time.monotonic()
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            for pid in pids:
                if now - first_seen.setdefault(pid, now) > YOUNG_SECONDS:
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                with self.lock:
                    if argv:
                        self.seen.add(os.path.basename(argv.split(b"\0", 1)[0].decode(errors="replace")))
                    if self.secret in argv:
                        self.hits.append(argv.replace(b"\0", b" ").decode(errors="replace"))
            if len(first_seen) > 4 * len(pids) + 1000:  # ended processes' pids, which may be reused
                alive = set(pids)
                first_seen = {pid: born for pid, born in first_seen.items() if pid in alive}

    def report(self, out: Path) -> None:
        with self.lock:
            out.write_text(json.dumps({"seen": sorted(self.seen), "hits": self.hits}))


def main() -> int:
    out = Path(sys.argv[1])
    watch = Watch(sys.stdin.readline().rstrip("\n").encode())
    sampler = threading.Thread(target=watch.run)
    sampler.start()
    for line in sys.stdin:
        if line.strip() == "report":
            watch.report(out)
            print("ok", flush=True)
    watch.stop.set()
    sampler.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
