"""Performance from real Prometheus exposition text, scraped from real servers on loopback."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deployments.config import EnvironmentConfig, MonitoringConfig, load_environment_file
from deployments.errors import HealthCheckFailed
from tasks.monitoring import (
    Baseline,
    MetricsUnavailable,
    Snapshot,
    Window,
    check_performance,
    judge,
    parse,
    quantile,
    record_baseline,
    scrape,
    window,
)
from tests.conftest import free_ports

PROJECT = Path(__file__).resolve().parents[2]
# jobapp's own buckets (jobapp/metrics.py).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INF = math.inf


def environment(tmp_path: Path, base_url: str = "http://127.0.0.1:8102") -> EnvironmentConfig:
    """The committed production file: max error rate 2%, p95 at most 500 ms and 3x the baseline."""
    text = (PROJECT / "deployments" / "production.toml").read_text()
    text = text.replace("../.sandbox", str(tmp_path)).replace('"http://127.0.0.1:8102"', f'"{base_url}"')
    text = text.replace("timeout_seconds = 5", "timeout_seconds = 2")
    (tmp_path / "production.toml").write_text(text)
    return load_environment_file(tmp_path / "production.toml")


class JobappMetrics:
    """jobapp's three metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("jobapp_http_requests_total", "HTTP requests answered.",
                                ["route", "method", "status"], registry=self.registry)
        self.duration = Histogram("jobapp_http_request_duration_seconds", "Time to answer an HTTP request.",
                                  ["route"], buckets=BUCKETS, registry=self.registry)
        self.users = Gauge("jobapp_active_users", "Users seen in the last 15 minutes.", registry=self.registry)

    def served(self, route: str, status: int, seconds: float, times: int = 1, method: str = "GET") -> None:
        for _ in range(times):
            self.requests.labels(route=route, method=method, status=str(status)).inc()
            self.duration.labels(route=route).observe(seconds)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


@pytest.fixture
def monitoring(tmp_path: Path) -> MonitoringConfig:
    return environment(tmp_path).monitoring


def test_parse_sums_every_route_but_the_metrics_endpoint(monitoring: MonitoringConfig) -> None:
    metrics = JobappMetrics()
    metrics.served("/health", 200, 0.003, times=10)
    metrics.served("/api/scrape", 200, 0.2, times=8, method="POST")
    metrics.served("/api/analyze", 500, 0.7, times=2, method="POST")
    # Slow and frequent scrapes would dominate both the count and p95 if they were counted.
    metrics.served("/metrics", 200, 3.0, times=50)
    metrics.users.set(7)
    text = metrics.text()
    assert "jobapp_http_requests_created" in text  # counted once: _created samples are not requests
    snapshot = parse(text, monitoring)
    assert snapshot.requests == 20 and snapshot.errors == 2
    assert snapshot.active_users == 7
    assert snapshot.buckets == {0.005: 10, 0.01: 10, 0.025: 10, 0.05: 10, 0.1: 10, 0.25: 18, 0.5: 18,
                                1.0: 20, 2.5: 20, 5.0: 20, INF: 20}
    # rank 19 lies in (0.5, 1.0], which holds observations 19 and 20.
    assert quantile(0.95, snapshot.buckets) == pytest.approx(0.75)


def test_parse_reads_the_other_common_label_and_metric_spellings() -> None:
    registry = CollectorRegistry()
    requests = Counter("http_requests", "Requests.", ["path", "code"], registry=registry)
    duration = Histogram("http_request_duration_seconds", "Latency.", ["path"], buckets=(0.1, 1.0),
                         registry=registry)
    for path, code in (("/", "200"), ("/", "503"), ("/metrics", "500")):
        requests.labels(path=path, code=code).inc()
        duration.labels(path=path).observe(0.05)
    snapshot = parse(generate_latest(registry).decode(), MonitoringConfig())
    assert (snapshot.requests, snapshot.errors) == (2, 1)
    assert snapshot.buckets == {0.1: 2, 1.0: 2, INF: 2}
    assert snapshot.active_users is None


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    # Interpolated in the bucket holding the rank: 95 of 100 lies 5/10 of the way into (0.25, 0.5].
    (0.95, {0.1: 50, 0.25: 90, 0.5: 100, INF: 100}, 0.375),
    # The rank is in the first bucket, whose lower bound is 0.
    (0.95, {0.1: 100, INF: 100}, 0.095),
    # The rank is in +Inf: the highest finite bound is all that can be said.
    (0.95, {0.1: 10, 0.5: 50, INF: 100}, 0.5),
    # An empty bucket in between is skipped.
    (0.5, {0.1: 50, 0.25: 50, 0.5: 100, INF: 100}, 0.1),
    (0.5, {1.0: 2, 2.0: 4, INF: 4}, 1.0),
    # Unsorted input is sorted first.
    (0.95, {INF: 100, 0.5: 100, 0.1: 50, 0.25: 90}, 0.375),
])
def test_quantile_matches_histogram_quantile(q: float, buckets: dict[float, float], expected: float) -> None:
    assert quantile(q, buckets) == pytest.approx(expected)


def test_quantile_of_no_observations_is_none() -> None:
    assert quantile(0.95, {}) is None
    assert quantile(0.95, {0.1: 0, 0.5: 0, INF: 0}) is None


def test_window_is_the_difference_of_two_snapshots() -> None:
    before = Snapshot(100, 2, {0.1: 80, 0.5: 100, INF: 100}, 5)
    after = Snapshot(150, 5, {0.1: 120, 0.5: 150, INF: 150}, 6)
    observed = window(before, after)
    assert (observed.requests, observed.errors, observed.active_users) == (50, 3, 6)
    # Deltas {0.1: 40, 0.5: 50}: rank 47.5 is 7.5/10 of the way into (0.1, 0.5].
    assert observed.p95_seconds == pytest.approx(0.4)
    assert observed.error_rate == pytest.approx(0.06)


def test_a_counter_that_went_down_means_a_restart_and_the_later_snapshot_is_the_window() -> None:
    before = Snapshot(1000, 10, {0.1: 1000, INF: 1000})
    after = Snapshot(30, 3, {0.1: 10, 0.5: 30, INF: 30})
    observed = window(before, after)
    assert (observed.requests, observed.errors) == (30, 3)
    assert observed.p95_seconds == pytest.approx(0.1 + 0.4 * (28.5 - 10) / 20)
    assert window(None, after) == observed


def test_an_idle_window_has_no_p95_and_no_error_rate() -> None:
    same = Snapshot(100, 1, {0.1: 100, INF: 100})
    observed = window(same, same)
    assert observed.requests == 0 and observed.p95_seconds is None and observed.error_rate == 0.0


def baseline(p95: float | None) -> Baseline:
    return Baseline(requests=1000, error_rate=0.001, p95_seconds=p95, active_users=4)


def test_judge_within_thresholds(tmp_path: Path) -> None:
    config = environment(tmp_path)
    assert judge(config, Window(100, 1, 0.1, 5), baseline(0.05), sent=20) == []
    assert judge(config, Window(100, 2, 0.49, 5), None, sent=20) == []  # exactly 2% is allowed
    assert judge(config, Window(20, 0, None, None), baseline(0.05), sent=20) == []


def test_judge_error_rate(tmp_path: Path) -> None:
    problems = judge(environment(tmp_path), Window(100, 3, 0.1, 5), baseline(0.05), sent=20)
    assert problems == ["error rate 3.00% is above 2.00%"]


def test_judge_p95_above_the_absolute_limit(tmp_path: Path) -> None:
    # Reported once: an absolute breach is not also reported as a regression.
    problems = judge(environment(tmp_path), Window(100, 0, 0.6, 5), baseline(0.05), sent=20)
    assert problems == ["p95 600 ms is above 500 ms"]


def test_judge_p95_regression_against_the_baseline(tmp_path: Path) -> None:
    problems = judge(environment(tmp_path), Window(100, 0, 0.2, 5), baseline(0.05), sent=20)
    assert problems == ["p95 200 ms is over 3x the pre-deploy 50 ms"]
    assert judge(environment(tmp_path), Window(100, 0, 0.2, 5), baseline(None), sent=20) == []


def test_judge_regression_floor_keeps_a_tiny_baseline_from_flagging_noise(tmp_path: Path) -> None:
    config = environment(tmp_path)
    # Against 1 ms, 60 ms is 60x; against the 25 ms floor it is 2.4x, within 3x.
    assert judge(config, Window(100, 0, 0.060, 5), baseline(0.001), sent=20) == []
    problems = judge(config, Window(100, 0, 0.080, 5), baseline(0.001), sent=20)
    assert problems == ["p95 80 ms is over 3x the pre-deploy 1 ms"]


def test_judge_missing_requests_mean_monitoring_receives_no_data(tmp_path: Path) -> None:
    problems = judge(environment(tmp_path), Window(12, 6, 0.1, 5), baseline(0.05), sent=20)
    assert problems == ["the metrics show 12 requests, 20 were sent: monitoring is not receiving data",
                        "error rate 50.00% is above 2.00%"]


class MetricsApp:
    """An app on loopback that counts its own requests, as jobapp does."""

    def __init__(self) -> None:
        self.metrics = JobappMetrics()
        self.counting = True
        self.api_status = 200
        self.metrics_status = 200
        self.metrics_body: str | None = None
        self.seen_users: list[str | None] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    status, body = app.metrics_status, app.metrics_body or app.metrics.text()
                else:
                    status, body = (app.api_status if self.path == "/api/health" else 200), '{"status": "ok"}'
                    app.seen_users.append(self.headers.get("X-User-Id"))
                if app.counting:
                    app.metrics.served(self.path, status, 0.004 if self.path == "/health" else 0.02)
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def metrics_app() -> Iterator[MetricsApp]:
    app = MetricsApp()
    yield app
    app.server.shutdown()
    app.server.server_close()


def test_scrape_reads_a_live_endpoint(metrics_app: MetricsApp, monitoring: MonitoringConfig) -> None:
    metrics_app.metrics.served("/health", 200, 0.004, times=4)
    metrics_app.metrics.users.set(3)
    snapshot = scrape(metrics_app.base_url + "/metrics", monitoring, 2.0)
    assert snapshot.requests == 4 and snapshot.active_users == 3 and snapshot.buckets[0.005] == 4


def test_scrape_refused_connection(monitoring: MonitoringConfig) -> None:
    (port,) = free_ports(1)
    with pytest.raises(MetricsUnavailable, match=rf"http://127.0.0.1:{port}/metrics did not answer \(ConnectError\)"):
        scrape(f"http://127.0.0.1:{port}/metrics", monitoring, 2.0)


def test_scrape_http_500(metrics_app: MetricsApp, monitoring: MonitoringConfig) -> None:
    metrics_app.metrics_status = 500
    with pytest.raises(MetricsUnavailable, match=r"/metrics answered HTTP 500$"):
        scrape(metrics_app.base_url + "/metrics", monitoring, 2.0)


def test_scrape_text_that_is_not_exposition(metrics_app: MetricsApp, monitoring: MonitoringConfig) -> None:
    metrics_app.metrics_body = "<html><body>Sign in</body></html>"
    with pytest.raises(MetricsUnavailable, match=r"/metrics is not Prometheus exposition \(invalid metric name"):
        scrape(metrics_app.base_url + "/metrics", monitoring, 2.0)


def test_scrape_without_the_latency_histogram(metrics_app: MetricsApp, monitoring: MonitoringConfig) -> None:
    registry = CollectorRegistry()
    Counter("jobapp_http_requests_total", "Requests.", ["route", "method", "status"], registry=registry).labels(
        route="/health", method="GET", status="200").inc()
    metrics_app.metrics_body = generate_latest(registry).decode()
    with pytest.raises(MetricsUnavailable) as caught:
        scrape(metrics_app.base_url + "/metrics", monitoring, 2.0)
    assert str(caught.value).endswith("has no jobapp_http_request_duration_seconds histogram; "
                                      "check monitoring.latency_metric")


def test_check_performance_on_an_app_that_counts_its_requests(metrics_app: MetricsApp, tmp_path: Path) -> None:
    config = environment(tmp_path, metrics_app.base_url)
    metrics_app.metrics.served("/api/scrape", 200, 0.02, times=100, method="POST")
    metrics_app.metrics.users.set(2)
    before = record_baseline.fn(config)
    assert before.requests == 100 and before.error_rate == 0.0 and before.active_users == 2
    performance = check_performance.fn(config, before, sample=20)
    assert performance.window.requests == 20 and performance.window.errors == 0
    assert performance.problems == []
    assert performance.describe().endswith("; within thresholds")
    assert metrics_app.seen_users == ["release-check"] * 20


def test_check_performance_fails_when_the_app_errors(metrics_app: MetricsApp, tmp_path: Path) -> None:
    config = environment(tmp_path, metrics_app.base_url)
    metrics_app.metrics.served("/health", 200, 0.004, times=10)
    metrics_app.api_status = 500
    with pytest.raises(HealthCheckFailed) as caught:
        check_performance.fn(config, None, sample=20)
    assert caught.value.step == "check performance (production)"
    assert "error rate 50.00% is above 2.00%" in str(caught.value)
    assert "it will be rolled back" in str(caught.value)


def test_check_performance_fails_when_monitoring_receives_nothing(metrics_app: MetricsApp, tmp_path: Path) -> None:
    config = environment(tmp_path, metrics_app.base_url)
    metrics_app.metrics.served("/health", 200, 0.004, times=10)
    metrics_app.counting = False
    with pytest.raises(HealthCheckFailed, match="the metrics show 0 requests, 20 were sent: monitoring is not "
                                                "receiving data"):
        check_performance.fn(config, None, sample=20)


# --- the watch's sources ---------------------------------------------------------------------------


def prometheus_config(tmp_path: Path, **monitoring: Any) -> EnvironmentConfig:
    config = environment(tmp_path)
    settings = {"source": "prometheus", "prometheus_url": "http://prometheus.test:9090",
                "selector": 'job="jobapp-production"', "query_window": "2m", **monitoring}
    return config.model_copy(update={"monitoring": config.monitoring.model_copy(update=settings)})


def prometheus_answering(answers: dict[str, Any], seen: list[str]) -> Any:
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        seen.append(query)
        for prefix, answer in answers.items():
            if query.startswith(prefix):
                return httpx.Response(200, json=answer) if isinstance(answer, dict) else answer
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    return httpx.MockTransport(handle)


def vector(*values: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": {}, "value": [1.0, v]} for v in values]}}


def test_prometheus_source_builds_queries_from_the_metric_names_and_selector(tmp_path: Path) -> None:
    from tasks.monitoring import PrometheusMetrics

    queries = PrometheusMetrics(prometheus_config(tmp_path)).queries()
    assert queries["up"] == 'min(up{job="jobapp-production"})'
    assert queries["requests"] == ('sum(increase(jobapp_http_requests_total{route!="/metrics",'
                                   'job="jobapp-production"}[2m]))')
    assert 'status=~"5.."' in queries["error_rate"] and queries["error_rate"].count("[2m]") == 2
    assert queries["p95_seconds"].startswith("histogram_quantile(0.95, sum by (le) (rate(jobapp_http_request_duration")
    own = PrometheusMetrics(prometheus_config(tmp_path, queries={"error_rate": "my_error_ratio"})).queries()
    assert own["error_rate"] == "my_error_ratio" and own["requests"] == queries["requests"]


def test_prometheus_source_reads_one_window(tmp_path: Path) -> None:
    from tasks.monitoring import PrometheusMetrics

    seen: list[str] = []
    transport = prometheus_answering({"min(up": vector("1"), "sum(increase": vector("400"),
                                      "sum(rate": vector("0.05"), "histogram_quantile": vector("NaN", "0.2"),
                                      "sum(jobapp_active_users": vector("3", "4")}, seen)
    observed = PrometheusMetrics(prometheus_config(tmp_path), transport).read()
    assert observed.requests == 400 and observed.error_rate == pytest.approx(0.05)
    assert observed.p95_seconds == pytest.approx(0.2), "NaN series are no data, not zero"
    assert observed.active_users == 7
    assert len(seen) == 5


@pytest.mark.parametrize("up, expected", [
    (vector(), "no such target"),
    (vector("0"), "target down"),
])
def test_prometheus_without_the_target_is_no_data(tmp_path: Path, up: dict[str, Any], expected: str) -> None:
    from tasks.monitoring import MetricsUnavailable, PrometheusMetrics

    source = PrometheusMetrics(prometheus_config(tmp_path), prometheus_answering({"min(up": up}, []))
    with pytest.raises(MetricsUnavailable, match=expected):
        source.read()


def test_prometheus_errors_are_no_data_with_the_reason(tmp_path: Path) -> None:
    import httpx

    from tasks.monitoring import MetricsUnavailable, PrometheusMetrics

    bad = httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error at char 5"})
    source = PrometheusMetrics(prometheus_config(tmp_path), prometheus_answering({"min(up": bad}, []))
    with pytest.raises(MetricsUnavailable, match="HTTP 400 parse error at char 5"):
        source.read()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(MetricsUnavailable, match="did not answer"):
        PrometheusMetrics(prometheus_config(tmp_path), httpx.MockTransport(refuse)).read()


def test_app_source_first_read_only_opens_the_window(tmp_path: Path) -> None:
    import httpx

    from tasks.monitoring import AppMetrics

    app = JobappMetrics()
    app.served("/api/jobs", 200, 0.05, times=10)
    body = {"text": app.text()}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body["text"])

    source = AppMetrics(environment(tmp_path), httpx.MockTransport(handle))
    first = source.read()
    assert first.requests == 0 and first.p95_seconds is None
    app.served("/api/jobs", 500, 0.05, times=3)
    app.served("/api/jobs", 200, 0.05, times=7)
    body["text"] = app.text()
    second = source.read()
    assert second.requests == 10 and second.error_rate == pytest.approx(0.3)


# --- an app without metrics -------------------------------------------------------------------------------


def test_an_app_without_metrics_is_reported_not_measured_and_never_scraped(tmp_path: Path) -> None:
    """monitoring.source = "none": the steps that measure say so and send nothing (the app's port is closed,
    so any scrape would fail); the watch reads health only."""
    from tasks.monitoring import NoMetrics, NotMeasured, check_performance, metrics_source, record_baseline

    (closed,) = free_ports(1)
    config = environment(tmp_path, base_url=f"http://127.0.0.1:{closed}")
    config = config.model_copy(update={"monitoring": config.monitoring.model_copy(update={"source": "none"})})
    baseline = record_baseline.fn(config)
    performance = check_performance.fn(config, None)
    assert isinstance(baseline, NotMeasured) and isinstance(performance, NotMeasured)
    assert performance.describe() == ('not measured: error rate and response time of the release '
                                      '(monitoring.source = "none": the app publishes no metrics)')
    source = metrics_source(config)
    assert isinstance(source, NoMetrics) and source.describe().startswith("health only")
    with pytest.raises(MetricsUnavailable):
        source.read()


def test_monitoring_none_is_a_choice_of_the_file(tmp_path: Path) -> None:
    assert MonitoringConfig(source="none").source == "none"
    with pytest.raises(ValueError, match="source"):
        MonitoringConfig(source="nothing")  # type: ignore[arg-type]
