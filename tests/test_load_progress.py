"""Progress on long work: a full load logs rows done, rows/s and the time left
(from the source's row estimate), and a backfill handed to the running worker
writes the same into its command's row, which the waiting CLI prints.
Real worker process, PostgreSQL source and state, SeaweedFS store."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import sqlalchemy as sa

from etl_service.control.commands import CommandQueue
from etl_service.source import Source
from etl_service.state import StateStore
from testsupport.processes import stop_process
from testsupport.snapshots import ETL, run_etl, wait_for

ROWS = 400_000


def _big_table(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE big (id bigint PRIMARY KEY, name text, amount numeric(12,2),"
                " updated_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO big (id, name, amount) SELECT g, md5(random()::text),"
                " round((random() * 10000)::numeric, 2) FROM generate_series(1, :n) g"
            ),
            {"n": ROWS},
        )
        conn.execute(sa.text("ANALYZE big"))  # what autovacuum does: reltuples is set
    engine.dispose()


def _progress_lines(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [entry for entry in lines if entry.get("event") == "load_progress"]


def test_full_loads_and_backfills_report_progress(pg_url, s3_env, data_dir, tmp_path):
    _big_table(pg_url)
    source = Source(pg_url)
    estimate = source.estimate_rows("big")
    source.close()
    assert estimate is not None and abs(estimate - ROWS) < ROWS * 0.1

    env = {
        **s3_env,
        "SOURCE_URL": pg_url,
        "DATABASE_URL": pg_url,
        "DATA_DIR": str(data_dir),
        "TABLES_TO_SYNC": "big",
        "BATCH_SIZE": "2000",
        "PROGRESS_LOG_SECONDS": "0.2",
        "SYNC_INTERVAL_SECONDS": "3600",
        "LOG_JSON": "true",
        "LOG_LEVEL": "INFO",
        "ETL_METRICS_PORT": "0",
    }
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen([ETL, "run"], env={**os.environ, **env}, stdout=out, stderr=out)
    state = StateStore(pg_url)
    try:
        wait_for(lambda: any(r["status"] != "running" for r in state.recent_runs(5)), 180)
        # The first cycle's full load logged its progress, with the rate and the time left.
        lines = _progress_lines(log)
        assert lines, log.read_text()[-2000:]
        first = lines[0]
        assert first["table"] == "big" and first["estimated_rows"] == estimate
        assert 0 < int(first["rows"]) < ROWS  # type: ignore[call-overload]
        assert int(first["rows_per_s"]) > 0 and first["eta_s"] is not None  # type: ignore[call-overload]

        # A backfill handed to the worker: its row carries the progress, the CLI prints it.
        result = run_etl(["backfill", "big"], env)
        assert result.returncode == 0, result.stderr
        [command] = [c for c in CommandQueue(state.engine).recent(5) if c.kind == "backfill"]
        assert command.status == "done"
        assert command.progress and "full load big:" in command.progress
        assert "rows/s" in command.progress and "s left" in command.progress
        shown = [line for line in result.stderr.splitlines() if "full load big:" in line]
        assert shown and "rows/s" in shown[0], result.stderr
    finally:
        stop_process(worker, timeout=30)
        state.close()
