"""bench/run takes every benchmark it finds: each must at least import and answer --help, so a helper
given a benchmark's name, or a script broken by a change elsewhere, fails here in seconds rather than
at the end of a long `make bench`."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_run() -> ModuleType:
    loader = SourceFileLoader("bench_run", str(BENCH / "run"))
    spec = spec_from_loader("bench_run", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_every_script_bench_run_picks_up_is_a_benchmark_that_imports() -> None:
    scripts = bench_run().discover()
    assert set(bench_run().ORDER) <= set(scripts), "a benchmark of the table's order is missing"

    def help_of(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(path), "--help"], cwd=BENCH.parent, capture_output=True,
                              text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=len(scripts)) as pool:
        answers = dict(zip(scripts, pool.map(help_of, scripts.values())))
    for name, answer in answers.items():
        assert answer.returncode == 0, f"bench/{name}.py --help exited {answer.returncode}:\n{answer.stderr[-2000:]}"
        assert answer.stdout.startswith("usage:"), (
            f"bench/{name}.py is not a benchmark (no command line); a helper's name starts with _:\n{answer.stdout[:500]}")


def test_helpers_are_left_out(tmp_path: Path) -> None:
    for name in ("overhead.py", "_shared.py", "notes.md"):
        (tmp_path / name).write_text("")
    assert list(bench_run().discover(tmp_path)) == ["overhead"]
