"""What migration safety costs the prerequisites: linting and measuring v4's three migrations.

On a fresh sandbox on PostgreSQL (staging live at v1, seeded), the verify-prerequisites subflow is run
for v4 (migrations 0002, 0003, 0004 pending) in rounds, alternately

  ours:      as shipped: lint-migrations (the revisions written out as SQL, classified, squawk) and the
             rehearsal measuring each revision's locks (revision by revision, pg_locks sampled);
  baseline:  the same subflow with lint-migrations left out, check-migrations not writing out the SQL,
             and the lock sampler off.

Prerequisites change nothing, so every round starts from the same state. The release's own test
command is off in both (it would only dilute the ratio); the security scan, the migration status and
the rehearsal on a copy of the database run in both. Target: ours ≤ 1.1× the baseline.

    .venv/bin/python bench/migration_safety.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import without_release_tests  # noqa: E402 - the path above makes it importable
from tests.conftest import free_ports  # noqa: E402


@contextmanager
def without_safety() -> Iterator[None]:
    """The subflow as it was before migration safety: no lint step, no lock sampling."""
    import flows.verify_prerequisites as prerequisites
    import tasks.migrations as migrations
    from tasks.migration_lint import LintReport

    @contextmanager
    def no_sampler(url: str, lock_timeout_ms: int) -> Iterator[None]:
        yield None

    saved = prerequisites.lint_migrations, prerequisites.check_migrations, migrations.sampling_locks
    check = prerequisites.check_migrations
    prerequisites.lint_migrations = lambda config, tree, status: LintReport([], "off")  # type: ignore[assignment]
    # check-migrations as before: the pending revisions, not their SQL.
    prerequisites.check_migrations = lambda config, tree, render=False: check(config, tree)  # type: ignore[assignment]
    migrations.sampling_locks = no_sampler  # type: ignore[assignment]
    try:
        yield
    finally:
        prerequisites.lint_migrations, prerequisites.check_migrations, migrations.sampling_locks = saved


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from deployments.config import load_environment_file
    from flows.verify_prerequisites import release_tree, verify_prerequisites
    from sample_app import sandbox
    from tasks.source import remove_worktree

    scratch = Path(tempfile.mkdtemp(prefix="bench-migration-safety-"))
    root = scratch / "sandbox"
    staging_port, production_port = free_ports(2)
    sandbox.up(root, db="postgresql", ports={"staging": staging_port, "production": production_port},
               log=lambda *_: None, edit=without_release_tests)
    os.environ["DEPLOY_ENVIRONMENTS_DIR"] = str(root / "environments")
    config = load_environment_file(root / "environments" / "staging.toml")
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    details: list[str] = []
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(server_startup_timeout=90):
            release_id = 1000
            for round_ in range(args.rounds + 1):  # the first round warms caches and is not counted
                order = ("ours", "baseline") if round_ % 2 == 0 else ("baseline", "ours")
                for side in order:
                    release_id += 1
                    started = time.perf_counter()
                    with (without_safety() if side == "baseline" else _nothing()):
                        result = verify_prerequisites(config=config, staging=None, ref="v4", release_id=release_id)
                    seconds = time.perf_counter() - started
                    remove_worktree(config, release_tree(config, release_id))
                    if round_ > 0:
                        times[side].append(seconds)
                    if side == "ours" and result.lint is not None and not details:
                        details = [r.describe() for r in result.lint.revisions]
                        details += [m.describe() for m in (result.rehearsal.measures if result.rehearsal else [])]
                    print(f"round {round_}{' (warm-up)' if round_ == 0 else ''}: {side:<8} {seconds:6.2f} s", flush=True)
    finally:
        sandbox.down(root, log=lambda *_: None)
        shutil.rmtree(scratch, ignore_errors=True)

    ours, baseline = statistics.median(times["ours"]), statistics.median(times["baseline"])
    print("\nwhat the lint and the measurement reported (first round):")
    for line in details:
        print(f"  {line}")
    print(f"\nprerequisites for v4, median of {args.rounds}: ours {ours:.2f} s, without lint and measurement "
          f"{baseline:.2f} s, {100 * (ours - baseline) / baseline:+.1f} %")
    ratio = ours / baseline
    print("RESULT " + json.dumps({"figure": "prerequisites with migration lint and lock measurement (v4, 3 revisions, "
                                  "PostgreSQL)", "ours": round(ours, 3), "baseline": round(baseline, 3),
                                  "ratio": round(ratio, 3), "target": "≤ 1.1×", "met": ratio <= 1.1, "unit": "s"},
                                 ensure_ascii=False))
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    sys.exit(main())
