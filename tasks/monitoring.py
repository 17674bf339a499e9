"""Performance from the app's metrics: request and error counts, p95 latency, active users.

Counters only ever grow, so a window's figures are the difference of two snapshots; a counter that
went down means the app restarted, and the later snapshot alone is the window. p95 is interpolated
within histogram buckets as Prometheus' `histogram_quantile` does. Requests for the metrics endpoint
itself are left out: scraping must not dilute the error rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deployments.config import EnvironmentConfig, MonitoringConfig
from deployments.errors import HealthCheckFailed
from tasks import http
from tasks.steps import read_step


class MetricsUnavailable(RuntimeError):
    """The metrics source did not answer or answered nonsense: a check is inconclusive, not passed."""


@dataclass(frozen=True)
class Snapshot:
    requests: float
    errors: float
    buckets: dict[float, float] = field(default_factory=dict)
    active_users: float | None = None
    taken_at: float = 0.0


@dataclass(frozen=True)
class Window:
    requests: float
    errors: float
    p95_seconds: float | None
    active_users: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def parse(text: str, monitoring: MonitoringConfig) -> Snapshot:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    users: float | None = None
    skip = monitoring.metrics_path
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("route") == skip or labels.get("path") == skip:
                continue
            if sample.name == monitoring.requests_metric or (
                family.name == monitoring.requests_metric.removesuffix("_total") and sample.name.endswith("_total")
            ):
                requests += sample.value
                status = labels.get("status") or labels.get("code") or labels.get("status_code") or ""
                if status.startswith("5"):
                    errors += sample.value
            elif sample.name == f"{monitoring.latency_metric}_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == monitoring.users_metric:
                users = (users or 0.0) + sample.value
    return Snapshot(requests, errors, buckets, users, time.time())


def scrape(url: str, monitoring: MonitoringConfig, timeout: float,
           transport: httpx.BaseTransport | None = None) -> Snapshot:
    try:
        with http.client(timeout=timeout, transport=transport) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise MetricsUnavailable(f"{url} did not answer ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise MetricsUnavailable(f"{url} answered HTTP {response.status_code}")
    try:
        snapshot = parse(response.text, monitoring)
    except ValueError as exc:
        raise MetricsUnavailable(f"{url} is not Prometheus exposition ({exc})") from None
    if not snapshot.buckets and snapshot.requests > 0:
        # Requests were counted but no duration: the histogram's name is wrong. (An idle app that
        # has served nothing yet has neither, and is simply a window without observations.)
        raise MetricsUnavailable(f"{url} has no {monitoring.latency_metric} histogram; check monitoring.latency_metric")
    return snapshot


def window(before: Snapshot | None, after: Snapshot) -> Window:
    if before is None or after.requests < before.requests:
        return Window(after.requests, after.errors, quantile(0.95, after.buckets), after.active_users)
    deltas = {le: after.buckets.get(le, 0.0) - before.buckets.get(le, 0.0) for le in after.buckets}
    return Window(after.requests - before.requests, after.errors - before.errors, quantile(0.95, deltas),
                  after.active_users)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets; None when the window holds no observation."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class Baseline:
    requests: float
    error_rate: float
    p95_seconds: float | None
    active_users: float | None

    def describe(self) -> str:
        p95 = f"{self.p95_seconds * 1000:.0f} ms" if self.p95_seconds is not None else "n/a"
        return (f"{self.requests:.0f} requests so far, error rate {self.error_rate:.2%}, p95 {p95}, "
                f"active users {self.active_users if self.active_users is not None else 'n/a'}")


@dataclass(frozen=True)
class Performance:
    window: Window
    baseline: Baseline | None
    problems: list[str]

    def describe(self) -> str:
        p95 = f"{self.window.p95_seconds * 1000:.0f} ms" if self.window.p95_seconds is not None else "n/a"
        text = f"{self.window.requests:.0f} requests, error rate {self.window.error_rate:.2%}, p95 {p95}"
        return text + (f"; {'; '.join(self.problems)}" if self.problems else "; within thresholds")


@dataclass(frozen=True)
class NotMeasured:
    """What a step that measures says when there is nothing to measure: never a pass."""

    what: str

    def describe(self) -> str:
        return f"not measured: {self.what} (monitoring.source = \"none\": the app publishes no metrics)"


def scrape_app(config: EnvironmentConfig, transport: httpx.BaseTransport | None = None) -> Snapshot:
    """The app's own metrics: its /metrics, or with [fleet] every host's, added up (as Prometheus sums
    a job's targets): through the load balancer each scrape would be another host's counters."""
    if config.fleet is None:
        return scrape(metrics_url(config), config.monitoring, config.health.timeout_seconds, transport)
    hosts = [scrape(metrics_url(host), host.monitoring, host.health.timeout_seconds, transport)
             for host in config.hosts]
    buckets: dict[float, float] = {}
    for host in hosts:
        for bound, count in host.buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + count
    users = [h.active_users for h in hosts if h.active_users is not None]
    return Snapshot(sum(h.requests for h in hosts), sum(h.errors for h in hosts), buckets,
                    sum(users) if users else None, time.time())


def measured(config: EnvironmentConfig) -> bool:
    return config.monitoring.source != "none"


def metrics_url(config: EnvironmentConfig) -> str:
    return config.service.base_url + config.monitoring.metrics_path


@read_step("record-baseline", retries=2)
def record_baseline(config: EnvironmentConfig) -> Baseline | NotMeasured:
    """The pre-deploy performance every later comparison is made against."""
    if not measured(config):
        return NotMeasured("no baseline of error rate and response time")
    snapshot = scrape_app(config)
    whole = window(None, snapshot)
    return Baseline(whole.requests, whole.error_rate, whole.p95_seconds, whole.active_users)


def judge(config: EnvironmentConfig, observed: Window, baseline: Baseline | None, sent: int) -> list[str]:
    monitoring = config.monitoring
    problems = []
    if observed.requests < sent:
        problems.append(f"the metrics show {observed.requests:.0f} requests, {sent} were sent: "
                        "monitoring is not receiving data")
    if observed.error_rate > monitoring.max_error_rate:
        problems.append(f"error rate {observed.error_rate:.2%} is above {monitoring.max_error_rate:.2%}")
    if observed.p95_seconds is not None:
        if observed.p95_seconds > monitoring.max_p95_seconds:
            problems.append(f"p95 {observed.p95_seconds * 1000:.0f} ms is above {monitoring.max_p95_seconds * 1000:.0f} ms")
        elif baseline is not None and baseline.p95_seconds is not None:
            # A floor keeps a near-zero baseline from turning noise into a regression.
            allowed = max(baseline.p95_seconds, 0.025) * monitoring.max_p95_regression
            if observed.p95_seconds > allowed:
                problems.append(f"p95 {observed.p95_seconds * 1000:.0f} ms is over {monitoring.max_p95_regression:g}x "
                                f"the pre-deploy {baseline.p95_seconds * 1000:.0f} ms")
    return problems


@read_step("check-performance", retries=0)
def check_performance(config: EnvironmentConfig, baseline: Baseline | None,
                      sample: int = 20) -> Performance | NotMeasured:
    """Runbook step 9: monitoring receives data; response time and error rate within range."""
    if not measured(config):
        return NotMeasured("error rate and response time of the release")
    before = scrape_app(config)
    paths = [config.health.path, config.health.api_path]
    with http.client(base_url=config.service.base_url, timeout=config.health.timeout_seconds,
                     headers={"X-User-Id": "release-check"}) as client:
        for i in range(sample):
            try:
                client.get(paths[i % len(paths)])
            except httpx.HTTPError:
                continue  # a request that got no answer shows as missing from the metrics below
    after = scrape_app(config)
    observed = window(before, after)
    problems = judge(config, observed, baseline, sample)
    result = Performance(observed, baseline, problems)
    if problems:
        raise HealthCheckFailed(f"check performance ({config.name})", "; ".join(problems),
                                "the release is slower or failing more than before; it will be rolled back")
    return result


class AppMetrics:
    """The app's own /metrics: each read is the window since the previous one."""

    def __init__(self, config: EnvironmentConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.transport = transport
        self.previous: Snapshot | None = None

    def describe(self) -> str:
        if self.config.fleet is not None:
            return f"{self.config.monitoring.metrics_path} of each of the {len(self.config.fleet.hosts)} hosts, added up"
        return metrics_url(self.config)

    def read(self) -> Window:
        snapshot = scrape_app(self.config, self.transport)
        previous, self.previous = self.previous, snapshot
        if previous is None:  # the first sample only sets the start of the first window
            return Window(0.0, 0.0, None, snapshot.active_users)
        return window(previous, snapshot)


class PrometheusMetrics:
    """A Prometheus server's HTTP query API: one instant query per figure, PromQL from the environment
    file (`monitoring.queries`) or built from the metric names, `monitoring.selector` and
    `monitoring.query_window`. A target Prometheus does not scrape is "no data", never a pass."""

    def __init__(self, config: EnvironmentConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.transport = transport
        self.url = str(config.monitoring.prometheus_url).rstrip("/") + "/api/v1/query"

    def describe(self) -> str:
        return f"{self.config.monitoring.prometheus_url} ({{{self.config.monitoring.selector}}})"

    def queries(self) -> dict[str, str]:
        m = self.config.monitoring

        def sel(*extra: str) -> str:
            return "{" + ",".join(part for part in (*extra, m.selector) if part) + "}"

        served, failed = f'route!="{m.metrics_path}"', 'status=~"5.."'
        requests = f"rate({m.requests_metric}{sel(served)}[{m.query_window}])"
        defaults = {
            "up": f"min(up{sel()})",
            "requests": f"sum(increase({m.requests_metric}{sel(served)}[{m.query_window}]))",
            "error_rate": f"sum(rate({m.requests_metric}{sel(served, failed)}[{m.query_window}])) / sum({requests})",
            "p95_seconds": f"histogram_quantile(0.95, sum by (le) "
                           f"(rate({m.latency_metric}_bucket{sel(served)}[{m.query_window}])))",
            "active_users": f"sum({m.users_metric}{sel()})",
        }
        return defaults | dict(m.queries)

    def read(self) -> Window:
        queries = self.queries()
        up = self.query(queries["up"])
        if up is None or up < 1:
            raise MetricsUnavailable(f"Prometheus does not scrape {{{self.config.monitoring.selector}}} "
                                     f"({'no such target' if up is None else 'target down'})")
        requests = self.query(queries["requests"]) or 0.0
        error_rate = self.query(queries["error_rate"])
        return Window(requests, (error_rate or 0.0) * requests, self.query(queries["p95_seconds"]),
                      self.query(queries["active_users"]))

    def query(self, promql: str) -> float | None:
        """The sum of an instant vector or a scalar; None for no series (or NaN: no traffic)."""
        timeout = self.config.health.timeout_seconds
        try:
            with http.client(timeout=timeout, transport=self.transport) as client:
                response = client.get(self.url, params={"query": promql})
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"{self.config.monitoring.prometheus_url} did not answer "
                                     f"({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus refused {promql!r}: HTTP {response.status_code} "
                                     f"{body.get('error', '')}".strip())
        data = body["data"]
        if data["resultType"] == "scalar":
            values = [data["result"][1]]
        elif data["resultType"] == "vector":
            values = [series["value"][1] for series in data["result"]]
        else:
            raise MetricsUnavailable(f"{promql!r} is a {data['resultType']}, not an instant vector")
        numbers = [float(v) for v in values if not math.isnan(float(v))]
        return sum(numbers) if numbers else None


class NoMetrics:
    """monitoring.source = "none": nothing to read; the watch checks health only and says so."""

    def describe(self) -> str:
        return "health only (monitoring.source = \"none\": the app publishes no metrics)"

    def read(self) -> Window:
        raise MetricsUnavailable("monitoring.source is \"none\"")


def metrics_source(config: EnvironmentConfig,
                   transport: httpx.BaseTransport | None = None) -> AppMetrics | PrometheusMetrics | NoMetrics:
    if not measured(config):
        return NoMetrics()
    if config.monitoring.source == "prometheus":
        return PrometheusMetrics(config, transport)
    return AppMetrics(config, transport)
