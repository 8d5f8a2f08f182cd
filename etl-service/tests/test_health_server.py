from __future__ import annotations

import httpx

from etl_service.ops.health_server import EtlMetrics, HealthServer


def test_health_and_metrics_endpoints():
    metrics = EtlMetrics(stale_after_seconds=600)
    server = HealthServer(metrics, host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        r = httpx.get(base + "/health")
        assert r.status_code == 200 and r.json()["status"] == "starting"

        metrics.observe_cycle(False, 0.5, error="source down")
        r = httpx.get(base + "/health")
        assert r.status_code == 503
        assert r.json()["consecutive_failures"] == 1 and r.json()["last_error"] == "source down"

        metrics.observe_cycle(
            True, 1.2, rows={"inventory": 7}, lag_seconds={"inventory": 3.5}, dead_letters=2
        )
        r = httpx.get(base + "/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"

        text = httpx.get(base + "/metrics").text
        assert 'etl_rows_synced_total{table="inventory"} 7.0' in text
        assert 'etl_table_lag_seconds{table="inventory"} 3.5' in text
        assert "etl_cycle_failures_total 1.0" in text
        assert "etl_dead_letters 2.0" in text
        assert "etl_cycle_duration_seconds_count 2.0" in text
        assert httpx.get(base + "/nope").status_code == 404
    finally:
        server.stop()
