"""A month of production releases with fixed timestamps, written into a real ledger, and the figures
the metrics and the DORA tests expect from it (worked out by hand below, not by the code under test)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy.orm import Session

from records.ledger import Ledger, Step

COMMITTED_PRODUCTION = Path(__file__).resolve().parents[2] / "deployments" / "production.toml"
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=timezone.utc)  # the window of 30 days starts 2026-03-01 12:00


def at(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=timezone.utc)


def write_history(ledger: Ledger, now: datetime = NOW) -> dict[str, int]:
    """The releases of the story, by name: their ledger ids. With another `now`, every moment moves
    by the same amount, so the figures over a window that ends at `now` stay the same."""
    ids: dict[str, int] = {}
    shift = now - NOW

    def moved(value: object) -> object:
        return value + shift if isinstance(value, datetime) else value

    def deploy(name: str, outcome: str, finished: datetime | None, started: datetime | None = None,
               **fields: object) -> int:
        started = started or (finished - timedelta(minutes=30) if finished else NOW - timedelta(hours=1))
        fields = {key: moved(value) for key, value in fields.items()}
        release = ledger.open_release(environment=fields.pop("environment", "production"), ref=name,
                                      outcome=outcome, started_at=moved(started), finished_at=moved(finished),
                                      **fields)
        ids[name] = release.id
        return release.id

    # Before the window: counts in the metrics (whole ledger), not in the DORA figures.
    deploy("v0", "succeeded", at(10, 10, month=2), commit_time=at(9, month=2), code_changed=True)
    # In the window.
    deploy("v1", "succeeded", at(2, 10), commit_time=at(2, 8), code_changed=True)  # lead 2 h
    deploy("v1.1", "aborted", at(3, 9))  # approval refused: nothing changed
    deploy("v2", "rolled_back", at(5, 10), commit_time=at(4), code_changed=True, migration_started=True,
           restored_at=at(5, 10, 20))  # failed in post-deploy verification; restored in 20 min
    deploy("v3", "succeeded", at(10, 6), commit_time=at(10), code_changed=True)  # lead 6 h
    deploy("v3-again", "noop", at(11, 9))  # already live
    deploy("v4-dry", "noop", at(12, 9), dry_run=True)  # a dry run is no deploy at all
    deploy("v4", "rolled_back", at(15, 4), commit_time=at(15), code_changed=True,
           restored_at=at(15, 5))  # went live, the watch rolled it back: 1 h from going live to restored
    deploy("v5", "succeeded", at(20, 1), commit_time=at(20), code_changed=True)  # lead 1 h
    deploy("v6", "rollback_failed", at(25, 10), commit_time=at(24), code_changed=True,
           migration_started=True)  # its rollback failed too: never restored
    deploy("v7", "succeeded", at(28, 12), started=at(28, 11, 25), commit_time=at(28), code_changed=True,
           timings={"verify-prerequisites": 300.5, "approvals": 900.0, "pre-deployment-verification": 240.0,
                    "deployment-execution": 420.0, "post-deployment-verification": 239.5})  # lead 12 h, 35 min
    deploy("v8", "running", None, started=at(31, 11), commit_time=at(31, 10), code_changed=True)
    # Another environment's releases never leak into production's figures.
    deploy("staging-v7", "failed", at(27, 12), environment="staging", code_changed=True)

    # Rollback runs: their own rows, with rollback_of naming the release they undo.
    deploy("rollback-v2", "succeeded", at(5, 10, 20), rollback_of=ids["v2"])
    deploy("rollback-v2-again", "noop", at(5, 10, 30), rollback_of=ids["v2"])
    deploy("rollback-v4", "succeeded", at(15, 5), rollback_of=ids["v4"])
    deploy("rollback-v6", "failed", at(25, 10, 30), rollback_of=ids["v6"])
    # A rollback run that failed before naming its subject (it found no release to undo).
    deploy("rollback", "failed", at(26, 9))

    with Session(ledger.engine) as session:
        v7 = ids["v7"]
        steps = [
            Step(release_id=v7, name="check-migrations", status="completed", started_at=at(28, 11, 25),
                 finished_at=at(28, 11, 25) + timedelta(seconds=10)),
            Step(release_id=v7, name="check-migrations", status="completed", started_at=at(28, 11, 45),
                 finished_at=at(28, 11, 45) + timedelta(seconds=5.5)),
            Step(release_id=v7, name="backup-database", status="completed", started_at=at(28, 11, 46),
                 finished_at=at(28, 11, 48)),
            Step(release_id=v7, name="run-migrations", status="completed", started_at=at(28, 11, 50),
                 finished_at=at(28, 11, 50) + timedelta(seconds=30)),
            Step(release_id=ids["v6"], name="run-migrations", status="failed", started_at=at(25, 9, 50),
                 finished_at=at(25, 9, 51)),
            Step(release_id=ids["v8"], name="fetch-release", status="running", started_at=at(31, 11)),
        ]
        for step in steps:
            step.started_at = step.started_at + shift
            step.finished_at = step.finished_at + shift if step.finished_at else None
        session.add_all(steps)
        session.commit()
    return ids


def environment_file(directory: Path, metrics: str = "", name: str = "production") -> Path:
    """The committed production file with its paths under `directory` and `metrics` as its [metrics]."""
    text = COMMITTED_PRODUCTION.read_text().replace("../.sandbox", str(directory))
    text = text.replace('name = "production"', f'name = "{name}"')
    if metrics:
        text += f"\n[metrics]\n{metrics}\n"
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path
