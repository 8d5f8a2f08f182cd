"""kill -9 the ETL at random points of a sync, 20 times: the store stays consistent.

After every kill the manifest names a complete snapshot whose checksum
verifies; after a clean restart the published data equals the source.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from etl_service.demo_source import create_demo_source, mutate_demo_rows
from etl_service.state import StateStore
from testsupport.snapshots import (
    ETL,
    fetch_current_verified,
    run_etl,
    snapshot_rows,
    source_rows,
    store_from_env,
)

TABLES = ("inventory", "products", "orders", "transactions", "customers")
KILLS = 20


@pytest.fixture
def etl_env(pg_url, s3_env, data_dir) -> dict[str, str]:
    return {
        **s3_env,
        "SOURCE_URL": pg_url,
        "TABLES_TO_SYNC": ",".join(TABLES),
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        # Every cycle writes new versions: keep retention busy as well.
        "SNAPSHOT_RETENTION": "3",
        "SNAPSHOT_RETENTION_GRACE_SECONDS": "0",
        "SYNC_SETTLE_SECONDS": "0",
        "RETRY_BASE_SECONDS": "0.1",
    }


@pytest.mark.slow
def test_kill_9_at_random_points_never_breaks_the_published_version(etl_env, pg_url, tmp_path):
    source = create_demo_source(pg_url)
    rng = random.Random(int(os.environ.get("KILL_TEST_SEED", "4")))
    store = store_from_env(etl_env)
    try:
        first = run_etl(["sync"], etl_env)
        assert first.returncode == 0, first.stderr[-3000:]
        # Kill points are drawn over the length of a typical (incremental) sync.
        mutate_demo_rows(source, rng, count=5)
        started = time.monotonic()
        second = run_etl(["sync"], etl_env)
        duration = time.monotonic() - started
        assert second.returncode == 0, second.stderr[-3000:]
        baseline, _ = fetch_current_verified(store, tmp_path / "check")

        versions = {baseline.version}
        killed_mid_run = 0
        attempts = 0
        # Twenty kills, each inside a running sync: a sync that ends before its
        # drawn kill point does not count, another is started, and the kill
        # points are drawn over a shorter span (syncs got faster than the one
        # measured, e.g. when the machine got quieter).
        while killed_mid_run < KILLS and attempts < 4 * KILLS:
            attempts += 1
            mutate_demo_rows(source, rng, count=5)  # every sync has something to publish
            proc = subprocess.Popen(
                [ETL, "sync"],
                env={**os.environ, **etl_env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.1, duration * 0.95))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed_mid_run += 1
            else:
                duration = max(0.2, duration * 0.8)
            proc.wait(timeout=60)
            manifest, _ = fetch_current_verified(store, tmp_path / f"check-{attempts}")
            versions.add(manifest.version)
        assert killed_mid_run == KILLS, f"{killed_mid_run} kills inside {attempts} syncs"

        # A clean restart publishes what the kills interrupted, and it equals the source.
        final = run_etl(["sync"], etl_env)
        assert final.returncode == 0, final.stderr[-3000:]
        manifest, plain = fetch_current_verified(store, tmp_path / "final")
        assert set(manifest.tables) == set(TABLES)
        for table in TABLES:
            columns, expected = source_rows(source, table)
            assert snapshot_rows(plain, table, columns) == expected, table
        # No killed run stays "running": the restart's cycle closed them all.
        state = StateStore(f"sqlite:///{etl_env['DATA_DIR']}/etl_state.db", must_exist=True)
        try:
            runs = state.recent_runs(limit=4 * KILLS + 3)
        finally:
            state.close()
        assert not [r for r in runs if r["status"] == "running"]
        interrupted = [r for r in runs if str(r["error"] or "").startswith("interrupted")]
        assert interrupted and all(r["status"] == "abandoned" for r in interrupted)
        # Retention kept history bounded despite the interrupted publishes.
        assert len([o for o in store.list("history/") if ".db" in o.key]) <= 3 + 1
    finally:
        source.dispose()
