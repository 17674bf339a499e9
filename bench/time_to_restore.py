"""Time to restore: from the failing check in phase 3 to the previous version verified healthy.

Runs on a fresh sandbox with a Prefect test server, in one process:
  downgrade path: production v2 -> v4 (unhealthy on production's data) -> rolled back by downgrade
  restore path:   production v2 -> v3 with the rehearsal off (its migration fails midway on SQLite)
                  -> rolled back by restoring the verified backup
and reports each against the phase 2 (deployment-execution: checkout, migrate, reload, log watch) of
the forward deploy of v2 to production in the same run. Target: ≤ 1× (one RESULT line per path;
see bench/README.md). Production's canary is off for these, so that v4 takes traffic and fails
phase 3 as the figure is defined. Then, with the canary on:
  canary path:    production v2 -> v4, stopped by its canary before the reload -> downgrade, and the
                  v2 processes, which never stopped serving, resume traffic before being renewed
reported against the same forward phase 2 (which had no canary, so it is the smaller baseline).

    .venv/bin/python bench/time_to_restore.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import approve_when_paused, bench_sandbox, without_release_tests  # noqa: E402 - the path above makes it importable
from tests.conftest import without_canary  # noqa: E402


def main() -> int:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from deployments.errors import DeployError
    from flows.production_deployment import production_deployment
    from sample_app import sandbox
    from records.ledger import Ledger

    def edit(text: str) -> str:
        text = text.replace("deadline_seconds = 30", "deadline_seconds = 5")
        return without_release_tests(text.replace("migration_rehearsal = true", "migration_rehearsal = false"))

    scratch = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    root = bench_sandbox(scratch / "sandbox", edit)
    os.environ["DEPLOY_ENVIRONMENTS_DIR"] = str(root / "environments")
    production_file = root / "environments" / "production.toml"
    with_canary = production_file.read_text()
    production_file.write_text(without_canary(with_canary))

    def deploy(env: str, ref: str) -> None:
        if env == "production":
            approve_when_paused()
        try:
            production_deployment(environment=env, ref=ref)
        except DeployError:
            pass

    results = []
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(server_startup_timeout=90):
            ledger = Ledger.for_state_dir(root / "state")
            deploy("staging", "v2")
            deploy("production", "v2")
            forward = ledger.releases("production")[0].timings["deployment-execution"]
            for path, ref, staging_ref in (("restore", "v3", "v3"), ("downgrade", "v4", "v4"), ("canary", "v4", "v4")):
                if path == "canary":
                    production_file.write_text(with_canary)
                else:
                    deploy("staging", staging_ref)
                deploy("production", ref)
                release = ledger.releases("production")[0]
                failed_step = [s for s in ledger.steps(release.id) if s.status == "failed"][-1]
                rollback = next(r for r in ledger.all_releases("production") if r.rollback_of == release.id)
                done = {s.name: s for s in ledger.steps(rollback.id) if s.status == "completed"}
                failed_at = _step_end(ledger, release.id, failed_step.name)
                healthy_at = _step_end(ledger, rollback.id, "check-health", first=True)
                restore = healthy_at - failed_at
                phase2 = forward
                results.append((path, ref, release.outcome, "restore-backup" in done, restore, phase2,
                                failed_step.name))
    finally:
        sandbox.down(root, log=lambda *_: None)
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"{'path':<10} {'release':<8} {'outcome':<12} {'failed check -> healthy':>24} {'v2 phase 2':>11} {'ratio':>6}")
    for path, ref, outcome, restored, seconds, phase2, failed in results:
        print(f"{path:<10} {ref:<8} {outcome:<12} {seconds:>22.2f} s {phase2:>9.2f} s {seconds / phase2:>6.2f}")
    for path, ref, outcome, restored, seconds, phase2, failed in results:
        ratio = seconds / phase2
        # A rollback that did not end rolled_back, or the restore path without its restore, misses.
        right_path = outcome == "rolled_back" and restored == (path == "restore")
        if path == "canary":
            right_path = right_path and failed == "check-canary"
        figure = f"time to restore, {path} path ({ref})" if path != "canary" else \
            "time to restore, v4 stopped by its canary (downgrade)"
        payload = {"figure": figure, "ours": round(seconds, 3),
                   "baseline": round(phase2, 3), "ratio": round(ratio, 3), "target": "≤ 1×",
                   "met": right_path and ratio <= 1, "unit": "s"}
        if not right_path:
            payload["note"] = f"outcome {outcome}, backup restored: {restored}, failed at {failed}"
        print("RESULT " + json.dumps(payload, ensure_ascii=False))
    return 0


def _step_end(ledger, release_id: int, name: str, first: bool = False) -> float:  # type: ignore[no-untyped-def]
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from records.ledger import Step

    with Session(ledger.engine) as session:
        step = session.scalars(select(Step).where(Step.release_id == release_id, Step.name == name)
                               .order_by(Step.id if first else Step.id.desc())).first()
        assert step is not None and step.finished_at is not None, (release_id, name)
        return step.finished_at.timestamp()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    sys.exit(main())
