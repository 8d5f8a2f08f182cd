"""A worker whose state database drops its lock stops, and says so.

The worker lock lives on one PostgreSQL connection (an advisory lock). When
the database restarts or an operator terminates the connections, the lock is
gone and another worker may take it; this one must not run on (it did:
cycles ended `abandoned` forever while its health stayed green). It stops the
way SIGTERM stops it and exits 1 with one line naming the cause, so its
supervisor starts it again, which takes the lock afresh.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from testsupport.snapshots import ETL, wait_for


def test_a_worker_whose_lock_is_dropped_stops_and_exits_non_zero(
    pg_url: str, data_dir: Path, tmp_path: Path
) -> None:
    create_demo_source(pg_url, seed=2).dispose()
    store = tmp_path / "store"
    env = {
        **os.environ,
        "SOURCE_URL": pg_url,
        "DATABASE_URL": pg_url,
        "DATA_DIR": str(data_dir),
        "STORAGE_URL": store.as_uri(),
        "SYNC_INTERVAL_SECONDS": "3600",
        "ETL_METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [ETL, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: (store / "current" / "manifest.json").exists() or proc.poll() is not None,
            timeout=120,
            what="the first publish",
        )
        assert proc.poll() is None, proc.communicate()
        engine = sa.create_engine(sa.make_url(pg_url).set(drivername="postgresql+psycopg"))
        with engine.connect() as conn:  # as a database restart would
            dropped = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        engine.dispose()
        assert dropped >= 1
        started = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    assert "dropped the worker lock" in err and "start it again" in err, err
    assert time.monotonic() - started < 30
    # ... and a new worker takes the lock and runs.
    again = subprocess.run(
        [ETL, "sync"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0, again.stderr
