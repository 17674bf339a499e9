"""The post-deploy watch on a real sandbox: a healthy release's watch ends clean, a watch that loses
its metrics source (a real Prometheus, stopped) is inconclusive, and v5, which passes every check at
deploy time, starts failing under traffic and is rolled back by its watch (FAULTS #14).

Watches are shortened here with the flow's `duration_seconds` / `interval_seconds` parameters.
"""

from __future__ import annotations

import re
import threading

import pytest
from prefect.client.orchestration import get_client

from deployments.errors import InvalidInput
from flows.post_deploy_watch import post_deploy_watch
from flows.production_deployment import production_deployment
from records.ledger import Ledger
from tests.flows.conftest import Sandbox
from tests.flows.invariants import assert_healthy_on, assert_lock_free, deployments_metric, state
from tests.prometheus import Prometheus
from tests.traffic import Traffic

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
ENV = "staging"


def ledger(box: Sandbox) -> Ledger:
    return Ledger.for_state_dir(box.config(ENV).state_dir)


def artifact(key: str) -> str:
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key}"
    return str(sorted(found, key=lambda a: a.created)[-1].data)


def tune(box: Sandbox, **watch: object) -> None:
    def edit(text: str) -> str:
        for key, value in watch.items():
            rendered = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
            text, n = re.subn(rf"^{key} = .*$", f"{key} = {rendered}", text, count=1, flags=re.M)
            if n == 0:
                text = text.replace("[watch]\n", f"[watch]\n{key} = {rendered}\n")
        return text

    box.edit(ENV, edit)


def test_unknown_deploy_run_is_refused(box: Sandbox) -> None:
    with pytest.raises(InvalidInput, match="no deploy of staging with run id"):
        post_deploy_watch(ENV, deploy_run_id="00000000-0000-0000-0000-000000000000", duration_seconds=2,
                          interval_seconds=1)


def test_a_healthy_release_is_watched_and_ends_clean(box: Sandbox) -> None:
    production_deployment(environment=ENV, ref="v2", reason="watch story")
    release = ledger(box).releases(ENV, limit=1)[0]
    assert release.outcome == "succeeded"
    # No post-deploy-watch deployment on this test server: the deploy says so instead of watching in-process.
    assert release.watch is None
    tune(box, breach_ticks=2, min_requests=5)
    with Traffic(box.config(ENV).service.base_url, analyze=False) as traffic:
        final = post_deploy_watch(ENV, deploy_run_id=release.flow_run_id, duration_seconds=6, interval_seconds=1,
                                  return_state=True)
    assert final.is_completed(), final.message
    assert traffic.statuses["200"] > 20 and set(traffic.statuses) == {"200"}
    watched = ledger(box).get(release.id)
    assert watched.outcome == "succeeded"
    assert watched.watch["outcome"] == "clean" and watched.watch["samples"]["ok"] >= 5, watched.watch
    summary = artifact("watch-staging-summary")
    assert "Watch of staging: **clean**" in summary and str(release.target_sha)[:12] in summary
    assert "error rate at most 0.00%" in summary


def test_a_watch_whose_prometheus_goes_away_is_inconclusive(box: Sandbox, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = box.config(ENV)
    target = config.service.base_url.removeprefix("http://")
    prometheus = Prometheus(tmp_path / "prometheus", {"jobapp-staging": target}).start()
    try:
        tune(box, breach_ticks=2, min_requests=5)
        box.edit(ENV, lambda text: text.replace(
            'source = "app"', f'source = "prometheus"\nprometheus_url = "{prometheus.url}"\n'
            'selector = \'job="jobapp-staging"\'\nquery_window = "5s"'))
        prometheus.wait_for_series('up{job="jobapp-staging"} == 1')
        prometheus.wait_for_series('jobapp_http_requests_total{job="jobapp-staging"}')
        # Stopped after the first samples, as a Prometheus that falls over mid-watch.
        threading.Timer(4.5, prometheus.stop).start()
        with Traffic(config.service.base_url, analyze=False):
            final = post_deploy_watch(ENV, duration_seconds=10, interval_seconds=1, return_state=True)
    finally:
        prometheus.stop()
        box.edit(ENV, lambda text: re.sub(r'source = "prometheus"\n(.*\n){3}', 'source = "app"\n', text))
    assert box.config(ENV).monitoring.source == "app"
    assert final.is_failed() and final.name == "Inconclusive", (final.name, final.message)
    release = ledger(box).last_succeeded(ENV)
    assert release is not None and release.watch["outcome"] == "inconclusive"
    samples = release.watch["samples"]
    assert samples["ok"] >= 2, "Prometheus answered before it was stopped"
    assert samples["no-data"] >= 2 and samples["breach"] == 0, samples
    assert any("no metrics" in alert for alert in release.watch["alerts"])
    assert "inconclusive" in artifact("watch-staging-summary")
    assert_healthy_on(box, ENV, str(release.target_sha))  # blind, not broken: nothing was rolled back


def test_v5_fails_under_traffic_and_its_watch_rolls_it_back(box: Sandbox) -> None:
    # v5 caches match scores and refuses new ones once a cache shard is full: fine at deploy time,
    # failing within a minute of real traffic. A small cache makes that seconds.
    box.edit(ENV, lambda text: text.replace("[service.env]\n", '[service.env]\nJOBAPP_MATCH_CACHE_SIZE = "16"\n'))
    tune(box, breach_ticks=2, min_requests=5, auto_rollback=True)
    before = state(box, ENV)
    production_deployment(environment=ENV, ref="v5", reason="watch story: v5")
    v5 = ledger(box).releases(ENV, limit=1)[0]
    assert v5.outcome == "succeeded" and v5.target_sha == box.sha("v5")
    metrics_before = deployments_metric(box, ENV)
    with Traffic(box.config(ENV).service.base_url, analyze=True) as traffic:
        final = post_deploy_watch(ENV, deploy_run_id=v5.flow_run_id, duration_seconds=60, interval_seconds=1,
                                  return_state=True)
    assert traffic.statuses["500"] > 0, traffic.statuses
    assert final.is_failed() and "Critical" in str(final.message), final.message
    assert "error rate" in str(final.message)
    undone = ledger(box).get(v5.id)
    assert undone.outcome == "rolled_back", undone.outcome
    assert undone.watch["outcome"] == "breached" and undone.watch["rollback"], undone.watch
    assert len(undone.watch["alerts"]) == 1
    # FAULTS invariants: code, database, health, lock, ledger.
    assert state(box, ENV) == before
    assert_healthy_on(box, ENV, before["sha"])
    assert_lock_free(ENV, ledger(box))
    after = deployments_metric(box, ENV)
    assert after["rolled_back"] == metrics_before.get("rolled_back", 0) + 1
    assert after["succeeded"] == metrics_before["succeeded"] - 1, "v5 counted as live after its rollback"
    rollback = [r for r in ledger(box).all_releases(ENV) if r.rollback_of == v5.id]
    assert len(rollback) == 1 and rollback[0].outcome == "succeeded"
    assert "watch" in rollback[0].reason
    assert "breached" in artifact("watch-staging-summary")
