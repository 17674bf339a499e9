"""The DORA figures of a known month of releases in a real ledger (SQLite and PostgreSQL), the table,
and the artifact on a real Prefect server."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow

from records.dora import DoraFigures, artifact_key, dora_figures, percentile, publish_dora_artifact, render_table
from records.ledger import Ledger
from tests.tasks.release_history import NOW, at, write_history


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else (
        request.getfixturevalue("postgres_database"))
    book = Ledger(url)
    yield book
    book.engine.dispose()


@pytest.fixture
def history(ledger: Ledger) -> Ledger:
    write_history(ledger)
    return ledger


def test_a_month_of_releases(history: Ledger) -> None:
    figures = dora_figures(history, "production", now=NOW)
    assert (figures.window_start, figures.window_end) == (at(1, 12), NOW)
    # Succeeded in the window: v1, v3, v5, v7. v0 finished before it, v8 is still running, the dry run
    # and the rollback runs are no deploys, and the staging release is another environment's.
    assert figures.deployments == 4
    assert figures.deployments_per_day == pytest.approx(4 / 30)
    assert figures.deployments_per_week == pytest.approx(28 / 30)
    # Lead times 1 h, 2 h, 6 h, 12 h: the median between 2 h and 6 h, p90 at 70 % from 6 h to 12 h.
    assert figures.lead_time_median_seconds == 4 * 3600
    assert figures.lead_time_p90_seconds == pytest.approx(6 * 3600 + 0.7 * 6 * 3600)
    # Failed: v2 (rolled back), v4 (live, then rolled back by the watch), v6 (its rollback failed too).
    assert (figures.failures, figures.changed) == (3, 7)
    assert figures.change_failure_rate == pytest.approx(3 / 7)
    # Restored in 20 min (v2) and 1 h after going live (v4); v6 never was.
    assert figures.restore_median_seconds == 40 * 60
    assert (figures.restored, figures.not_restored) == (2, 1)
    assert (figures.aborted, figures.noop) == (1, 1)
    assert figures.success_ratio == pytest.approx(4 / 7)
    assert figures.success_target == 0.95 and figures.target_met is False and not figures.empty


def test_the_window_ends_now_and_reaches_back_the_days_asked(history: Ledger) -> None:
    figures = dora_figures(history, "production", days=7, now=NOW)
    # 2026-03-24 12:00 .. 03-31 12:00: v6 (rollback failed) and v7 (succeeded, lead 12 h).
    assert (figures.deployments, figures.changed, figures.failures) == (1, 2, 1)
    assert figures.deployments_per_day == pytest.approx(1 / 7) and figures.deployments_per_week == 1.0
    assert figures.lead_time_median_seconds == figures.lead_time_p90_seconds == 12 * 3600
    assert figures.change_failure_rate == 0.5 and figures.success_ratio == 0.5
    assert figures.restore_median_seconds is None and (figures.restored, figures.not_restored) == (0, 1)


def test_a_release_the_watch_rolled_back_is_a_failed_deploy(history: Ledger) -> None:
    ids = {r.ref: r.id for r in history.all_releases("production")}
    # The watch found v7 unhealthy an hour after it went live; the rollback restored v5 an hour later.
    history.update(ids["v7"], outcome="rolled_back", restored_at=at(28, 14))
    figures = dora_figures(history, "production", now=NOW)
    assert (figures.deployments, figures.failures, figures.changed) == (3, 4, 7)
    assert figures.lead_time_median_seconds == 2 * 3600  # 1 h, 2 h, 6 h: v7 no longer counts
    assert figures.restore_median_seconds == 3600  # 20 min, 1 h, 2 h (from going live)
    assert (figures.restored, figures.not_restored) == (3, 1)
    assert figures.success_ratio == pytest.approx(3 / 7)


def test_no_deploys_in_the_window(history: Ledger) -> None:
    figures = dora_figures(history, "production", days=1, now=NOW)  # only v8, still running
    assert figures.empty and figures.verdict == "no deploys in the window"
    assert (figures.deployments, figures.changed, figures.deployments_per_day) == (0, 0, 0.0)
    assert figures.change_failure_rate is None and figures.success_ratio is None and figures.target_met is None
    assert figures.lead_time_median_seconds is None and figures.restore_median_seconds is None
    table = render_table(figures)
    assert "no deploys in the window" in table and "median —, p90 —" in table


def test_an_empty_ledger(ledger: Ledger) -> None:
    figures = dora_figures(ledger, "production", now=NOW)
    assert figures.empty and figures.verdict == "no deploys in the window"
    assert figures.as_dict()["success_ratio"] is None and figures.as_dict()["target_met"] is None


def test_only_deploys_that_changed_nothing(history: Ledger) -> None:
    figures = dora_figures(history, "production", days=1, now=at(3, 12))  # v1.1, refused at approval
    assert figures.empty and figures.aborted == 1
    assert figures.verdict == "no deploy changed production in the window"


def test_days_must_be_positive(history: Ledger) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        dora_figures(history, "production", days=0, now=NOW)


def test_the_target_comes_from_the_caller(history: Ledger) -> None:
    assert dora_figures(history, "production", days=7, now=NOW, target=0.5).target_met is True


@pytest.mark.parametrize(("values", "fraction", "expected"), [
    ([5.0], 0.9, 5.0),
    ([1.0, 2.0], 0.5, 1.5),
    ([float(n) for n in range(1, 11)], 0.9, 9.1),
    ([10.0, 1.0, 4.0], 0.9, 8.8),
])
def test_percentile_interpolates_between_ranks(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == pytest.approx(expected)


def test_the_table(history: Ledger) -> None:
    table = render_table(dora_figures(history, "production", now=NOW))
    assert table.splitlines() == [
        "DORA figures for production, last 30 days (2026-03-01 12:00 to 2026-03-31 12:00 UTC)",
        "",
        "deployment frequency   4 succeeded deploys: 0.13 a day, 0.93 a week",
        "lead time for changes  median 4h 00m, p90 10h 12m",
        "change failure rate    42.9 % (3 of 7 deploys that changed production)",
        "time to restore        median 40m 00s (2 restored, 1 not restored)",
        "success ratio          57.1 % against the 95 % target: not met",
        "changed nothing        1 aborted, 1 noop",
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_artifact_outside_a_flow_run(history: Ledger) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    figures = dora_figures(history, "production", now=NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecated way would warn
        artifact_id = publish_dora_artifact(figures)
    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dora-production"])))
    stored = next(a for a in artifact if a.id == artifact_id)
    assert stored.key == artifact_key("production") == "dora-production"
    assert stored.type == "markdown" and stored.flow_run_id is None
    assert "| change failure rate | 42.9 % (3 of 7 deploys that changed production) |" in str(stored.data)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_artifact_inside_a_flow_run_belongs_to_it(history: Ledger) -> None:
    from prefect.client.orchestration import get_client

    @flow
    def report(figures: DoraFigures) -> str:
        return str(publish_dora_artifact(figures))

    state = report(dora_figures(history, "production", days=7, now=NOW), return_state=True)
    artifact_id = state.result()
    with get_client(sync_client=True) as client:
        stored = client.read_artifacts()
    artifact = next(a for a in stored if str(a.id) == artifact_id)
    assert artifact.key == "dora-production" and artifact.flow_run_id == state.state_details.flow_run_id
    assert "no deploys" not in str(artifact.data) and "50.0 %" in str(artifact.data)
