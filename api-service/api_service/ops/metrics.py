"""Prometheus metrics, recorded by one pure ASGI middleware (the JSON access
log is request_log.py's).

Under Gunicorn every worker writes its samples to PROMETHEUS_MULTIPROC_DIR
(gunicorn_conf sets it up), so `/metrics` on any worker reports the whole
server. Data version and age are read from the answering worker at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_service.data.snapshots import SnapshotManager

__all__ = [
    "CACHE_BYTES",
    "CACHE_REQUESTS",
    "CONTENT_TYPE_LATEST",
    "QUERY_SECONDS",
    "RATE_LIMIT_REFUSALS",
    "ROWS_RETURNED",
    "RequestMetricsMiddleware",
    "render_metrics",
]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "api_requests_total",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "api_request_duration_seconds",
    "HTTP request latency by route template and status",
    ["route", "status"],
    buckets=_LATENCY_BUCKETS,
)
QUERY_SECONDS = Histogram(
    "api_query_duration_seconds",
    "Query execution time in DuckDB (cache misses)",
    buckets=_LATENCY_BUCKETS,
)
ROWS_RETURNED = Histogram(
    "api_query_rows_returned",
    "Rows per query response",
    buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
)
CACHE_REQUESTS = Counter(
    "api_result_cache_requests_total",
    "Result cache lookups by result (hit, miss, not_modified)",
    ["result"],
)
CACHE_BYTES = Gauge(
    "api_result_cache_bytes", "Bytes held by the result caches", multiprocess_mode="livesum"
)
RATE_LIMIT_REFUSALS = Counter(
    "api_rate_limit_refusals_total", "Requests refused by the rate limit (HTTP 429)"
)


class _DataFreshness(Collector):
    def __init__(self, manager: SnapshotManager | None) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        snap = self.manager.current if self.manager is not None else None
        info = GaugeMetricFamily(
            "api_data_version_info", "The data version this worker serves", labels=["version"]
        )
        age = GaugeMetricFamily(
            "api_data_age_seconds", "Seconds since the served snapshot was created"
        )
        if snap is not None:
            info.add_metric([snap.version], 1)
            age.add_metric([], round(snap.manifest.age_seconds, 3))
        yield info
        yield age
        if self.manager is None:
            return
        # The manager's counters live in the worker that answers this scrape;
        # the pid label keeps workers' series apart (sum them in queries).
        pid = str(os.getpid())
        for name, doc, value in (
            (
                "api_snapshot_refresh_failures",
                "Manifest polls or downloads that failed",
                self.manager.refresh_failures,
            ),
            (
                "api_snapshot_verification_failures",
                "Snapshots refused (checksum, size, probe)",
                self.manager.verification_failures,
            ),
            ("api_snapshot_swaps", "New snapshot versions swapped in", self.manager.swaps),
        ):
            family = CounterMetricFamily(name, doc, labels=["worker_pid"])
            family.add_metric([pid], value)
            yield family


class _MemoryBudget(Collector):
    """The answering worker's memory budget (ops/memory_budget.py) and its use."""

    _PARTS = (
        "limit",
        "headroom",
        "python",
        "light",
        "malloc_retained",
        "duckdb",
        "duckdb_untracked",
        "heavy",
        "cache",
    )

    def __init__(self, memory: dict[str, object] | None) -> None:
        self.memory = memory

    def collect(self) -> Iterator[Metric]:
        if not self.memory:
            return
        m = self.memory
        budget = GaugeMetricFamily(
            "api_memory_budget_bytes", "This worker's memory budget by part", labels=["part"]
        )
        for part in self._PARTS:
            budget.add_metric([part], float(m[part]))  # type: ignore[arg-type]
        budget.add_metric(["max_result_bytes"], float(m["max_result_bytes"]))  # type: ignore[arg-type]
        yield budget
        yield GaugeMetricFamily(
            "api_memory_heavy_reserved_bytes",
            "Bytes of the large-result budget reserved now (this worker)",
            value=float(m["heavy_reserved"]),  # type: ignore[arg-type]
        )
        yield CounterMetricFamily(
            "api_busy_refusals",
            "Requests answered 503 busy by admission control (this worker)",
            value=float(m["busy_refusals_total"]),  # type: ignore[arg-type]
        )


class _IdentityProvider(Collector):
    """The answering worker's signing keys: age, and whether they are stale."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        pid = str(os.getpid())
        stale = GaugeMetricFamily(
            "api_identity_keys_stale",
            "1 while tokens are checked against stale signing keys (the JWKS cannot be fetched)",
            labels=["worker_pid"],
        )
        stale.add_metric([pid], 1.0 if self.status["status"] == "stale" else 0.0)
        yield stale
        age = self.status.get("keys_age_seconds")
        if age is not None:
            family = GaugeMetricFamily(
                "api_identity_keys_age_seconds",
                "Seconds since the signing keys were last fetched",
                labels=["worker_pid"],
            )
            family.add_metric([pid], float(age))
            yield family


def render_metrics(
    manager: SnapshotManager | None,
    memory: dict[str, object] | None = None,
    identity: dict[str, Any] | None = None,
) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    freshness = CollectorRegistry()
    freshness.register(_DataFreshness(manager))
    freshness.register(_MemoryBudget(memory))
    if identity is not None:
        freshness.register(_IdentityProvider(identity))
    return generate_latest(registry) + generate_latest(freshness)


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by route template and status."""

    _MAX_SERIES = 1_024  # label sets whose children are kept (methods come from clients)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (route, method, status) -> the counter and histogram children: labels()
        # validates and locks on every call, this is one dict lookup.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def _children(self, template: str, method: str, code: str) -> tuple[Any, Any]:
        key = (template, method, code)
        children = self._series.get(key)
        if children is None:
            children = (REQUESTS.labels(template, method, code), LATENCY.labels(template, code))
            if len(self._series) < self._MAX_SERIES:
                self._series[key] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            requests, latency = self._children(template, scope["method"], str(status))
            requests.inc()
            latency.observe(elapsed)
            if status == 429:
                RATE_LIMIT_REFUSALS.inc()
