"""Watching the scheduler's cycles: metrics, the /health port, and alerts.

`CycleMonitor.observe()` runs after every scheduled cycle; it never raises, so
monitoring trouble cannot stop syncing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from analytics_shared.logging_config import get_logger
from etl_service.ops.alerts import AlertNotifier
from etl_service.ops.health_server import EtlMetrics, HealthServer
from etl_service.settings import EtlSettings
from etl_service.state import StateStore
from etl_service.sync import CycleResult, CycleStatus

__all__ = ["CycleMonitor"]

log = get_logger(__name__)

# "skipped" means another replica holds the leader lock: healthy, just standing by.
_OK: frozenset[CycleStatus] = frozenset({"success", "skipped"})


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
        self.server = (
            HealthServer(self.metrics, port=settings.etl_metrics_port)
            if settings.etl_metrics_port
            else None
        )

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
