"""A host's run given up for lost by a deploy (its worker went silent) is said so in the ledger, where
the run looks before each change it makes: Prefect lets a cancelled run that a worker takes later start
anyway, and it must then change nothing behind the rollback."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from deployments.fleet import HostConfig
from records.ledger import Ledger
from tasks.fleet import give_up, given_up
from tasks.steps import recording


def test_a_run_given_up_for_lost_is_known_as_such_and_no_other(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    release = ledger.open_release(environment="production", ref="v2")
    lost, other = uuid4(), uuid4()
    host = HostConfig(name="web-2", address="127.0.0.12:8102", workspace=tmp_path)
    give_up(None, host, lost, "its worker stopped polling queue web-2 13 s ago")  # type: ignore[arg-type]
    assert not given_up(ledger, release.id, "web-2", str(lost))  # outside a recorded deploy: nothing written
    with recording(ledger, release.id):
        give_up(None, host, lost, "its worker stopped polling queue web-2 13 s ago")  # type: ignore[arg-type]
    assert given_up(ledger, release.id, "web-2", str(lost))
    assert not given_up(ledger, release.id, "web-2", str(other))
    assert not given_up(ledger, release.id, "web-3", str(lost))
    [step] = ledger.steps(release.id)
    assert (step.name, step.status) == ("given-up [web-2]", "failed") and "stopped polling" in step.detail
    ledger.engine.dispose()
