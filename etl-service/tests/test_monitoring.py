"""The scheduler exposes /health and /metrics and pages on repeated failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from etl_service.demo_source import create_demo_source
from etl_service.ops.monitoring import CycleMonitor
from etl_service.settings import EtlSettings
from etl_service.state import StateStore
from etl_service.sync import CycleResult
from testsupport.ports import free_port

BIN = Path(sys.executable).parent


def test_running_scheduler_serves_health_and_metrics(pg_url, data_dir):
    source = create_demo_source(pg_url)
    port = free_port()
    env = {
        **os.environ,
        "SOURCE_URL": pg_url,
        "DATA_DIR": str(data_dir),
        "STORAGE_URL": (data_dir / "store").resolve().as_uri(),
        "TABLES_TO_SYNC": "inventory,orders",
        "SYNC_INTERVAL_SECONDS": "30",
        "ETL_METRICS_PORT": str(port),
    }
    proc = subprocess.Popen(
        [str(BIN / "analytics-etl"), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline:
            assert proc.poll() is None
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if health.json().get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"ETL never reported healthy: {health.text if health else None}")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'etl_rows_synced_total{table="inventory"} 1000.0' in metrics
        assert 'etl_table_lag_seconds{table="orders"}' in metrics
        assert "etl_last_success_timestamp_seconds" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        source.dispose()


def test_monitor_counts_failures_and_survives_state_errors(data_dir, capsys, caplog):
    settings = EtlSettings(DATA_DIR=str(data_dir), ETL_METRICS_PORT=0, ALERT_FAILURE_THRESHOLD=2)
    state = StateStore(settings.resolved_database_url)
    monitor = CycleMonitor(settings, state)
    monitor.observe(CycleResult(run_id=1, status="failed", error="source down"))
    assert monitor.notifier.consecutive_failures == 1
    monitor.observe(CycleResult(run_id=2, status="partial", error="orders failed"))
    assert monitor.notifier.consecutive_failures == 2
    status, body = monitor.metrics.health()
    assert status == 503 and body["last_error"] == "orders failed"
    # A broken state store (its database file gone: every query fails) must
    # not break the scheduler's tick; the failure is logged.
    state.close()
    db_file = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
    assert db_file.is_file()
    db_file.unlink()
    with pytest.raises(Exception):
        state.table_states()  # really broken
    capsys.readouterr()
    caplog.clear()
    monitor.observe(CycleResult(run_id=3, status="success"))
    # structlog prints directly until some test configures logging, then it goes
    # through the stdlib loggers: look in both places.
    printed = capsys.readouterr()
    logged = [r.getMessage() for r in caplog.records]
    assert any("cycle_monitoring_failed" in text for text in [printed.out, printed.err, *logged])
