"""Watching the scheduler's cycles: metrics, the /health port, and alerts.

`CycleMonitor.observe()` runs after every scheduled cycle; it never raises, so
monitoring trouble cannot stop syncing.
"""

from __future__ import annotations

import errno
from datetime import UTC, datetime

from analytics_shared.logging_config import get_logger
from etl_service.errors import EtlError
from etl_service.ops.alerts import AlertNotifier
from etl_service.ops.health_server import EtlMetrics, HealthServer
from etl_service.settings import EtlSettings
from etl_service.state import StateStore
from etl_service.sync import CycleResult, CycleStatus

__all__ = ["CycleMonitor"]

log = get_logger(__name__)

# "skipped" means another replica holds the leader lock: healthy, just standing by.
_OK: frozenset[CycleStatus] = frozenset({"success", "skipped"})


def _health_server(metrics: EtlMetrics, port: int) -> HealthServer | None:
    """The /health and /metrics server; a port in use is one line naming the setting."""
    if not port:
        return None
    try:
        return HealthServer(metrics, port=port)
    except OSError as exc:
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"({exc.strerror})"
        raise EtlError(
            f"ETL_METRICS_PORT: port {port} {reason}; stop the other process, set"
            " ETL_METRICS_PORT to a free port, or 0 to serve no /health"
        ) from exc


class CycleMonitor:
    def __init__(self, settings: EtlSettings, state: StateStore) -> None:
        self.state = state
        self.metrics = EtlMetrics(stale_after_seconds=settings.alert_stale_after_seconds)
        webhook = settings.alert_webhook_url
        routing = settings.alert_routing_key
        self.notifier = AlertNotifier(
            webhook.get_secret_value() if webhook else None,
            fmt=settings.alert_webhook_format,
            routing_key=routing.get_secret_value() if routing else None,
            failure_threshold=settings.alert_failure_threshold,
            stale_after_seconds=settings.alert_stale_after_seconds,
        )
        self.server = _health_server(self.metrics, settings.etl_metrics_port)

    def start(self) -> None:
        if self.server is not None:
            self.server.start()
            log.info("etl_health_server_started", port=self.server.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def observe(self, result: CycleResult) -> None:
        if result.status == "abandoned":  # shutting down: nothing to judge
            return
        try:
            now = datetime.now(UTC)
            lags = {
                table.table_name: (now - table.last_synced_at).total_seconds()
                for table in self.state.table_states()
                if table.last_synced_at
            }
            ok = result.status in _OK
            self.metrics.observe_cycle(
                ok,
                result.duration_seconds,
                rows={t: outcome.rows_read for t, outcome in result.outcomes.items()},
                lag_seconds=lags,
                dead_letters=len(self.state.dead_letters("open")),
                error=result.error,
            )
            self.notifier.record_cycle(ok, error=result.error)
            for change in result.schema_changes:
                self.notifier.schema_changed(change)
            last = self.state.last_success()
            if last and last.get("finished_at"):
                self.notifier.record_data_age((now - last["finished_at"]).total_seconds())
        except Exception:
            log.exception("cycle_monitoring_failed")
