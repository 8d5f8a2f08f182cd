"""The ETL's HTTP side door: `/health` (JSON) and `/metrics` (Prometheus).

Runs in a daemon thread next to the scheduler on `ETL_METRICS_PORT`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["EtlMetrics", "HealthServer"]


class EtlMetrics:
    """What operators watch: freshness, lag, volume, duration, failures, dead letters."""

    def __init__(self, stale_after_seconds: float = 900.0) -> None:
        self.registry = CollectorRegistry()
        self.stale_after_seconds = stale_after_seconds
        self.last_success = Gauge(
            "etl_last_success_timestamp_seconds",
            "Unix time of the last successful cycle",
            registry=self.registry,
        )
        self.table_lag = Gauge(
            "etl_table_lag_seconds",
            "Source time minus the table's watermark",
            ["table"],
            registry=self.registry,
        )
        self.rows_synced = Counter(
            "etl_rows_synced_total",
            "Rows read from the source and merged",
            ["table"],
            registry=self.registry,
        )
        self.cycle_duration = Histogram(
            "etl_cycle_duration_seconds",
            "Wall time of one sync cycle",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.failures = Counter(
            "etl_cycle_failures_total", "Sync cycles that failed", registry=self.registry
        )
        self.dead_letters = Gauge(
            "etl_dead_letters", "Entries waiting in the dead-letter queue", registry=self.registry
        )
        self.memory_budget = Gauge(
            "etl_memory_budget_bytes",
            "The ETL's memory budget (ops/memory_budget.py), by part",
            ["part"],
            registry=self.registry,
        )
        self._state: dict[str, Any] = {
            "last_success_at": None,
            "last_error": None,
            "consecutive_failures": 0,
            "cycles": 0,
        }
        self._lock = threading.Lock()

    def observe_cycle(
        self,
        ok: bool,
        duration_seconds: float,
        rows: dict[str, int] | None = None,
        lag_seconds: dict[str, float] | None = None,
        dead_letters: int | None = None,
        error: str | None = None,
    ) -> None:
        self.cycle_duration.observe(duration_seconds)
        for table, count in (rows or {}).items():
            self.rows_synced.labels(table).inc(count)
        for table, lag in (lag_seconds or {}).items():
            self.table_lag.labels(table).set(lag)
        if dead_letters is not None:
            self.dead_letters.set(dead_letters)
        with self._lock:
            self._state["cycles"] += 1
            if ok:
                now = time.time()
                self.last_success.set(now)
                self._state.update(last_success_at=now, last_error=None, consecutive_failures=0)
            else:
                self.failures.inc()
                self._state["consecutive_failures"] += 1
                self._state["last_error"] = error

    def show_memory_budget(self, budget: dict[str, Any]) -> None:
        """The budget the process started with, on /health and /metrics."""
        for part in ("limit", "headroom", "python", "stream", "duckdb"):
            self.memory_budget.labels(part).set(budget[part])
        with self._lock:
            self._state["memory"] = budget

    def health(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            state = dict(self._state)
        last = state["last_success_at"]
        age = None if last is None else time.time() - last
        healthy = age is not None and age <= self.stale_after_seconds
        body = {
            "status": "ok" if healthy else ("starting" if state["cycles"] == 0 else "degraded"),
            "seconds_since_success": None if age is None else round(age, 1),
            **state,
        }
        return (200 if healthy or state["cycles"] == 0 else 503), body


class HealthServer:
    def __init__(self, metrics: EtlMetrics, host: str = "0.0.0.0", port: int = 9108) -> None:  # noqa: S104
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, status = (
                        generate_latest(outer.metrics.registry),
                        CONTENT_TYPE_LATEST,
                        200,
                    )
                elif self.path in ("/health", "/"):
                    status, doc = outer.metrics.health()
                    body, ctype = json.dumps(doc).encode(), "application/json"
                else:
                    body, ctype, status = b"not found\n", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.metrics = metrics
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
