"""State store migrations, the CLI (status, dlq, backfill), the scheduler's shutdown, types."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql

from etl_service import cli
from etl_service.demo_source import create_demo_source
from etl_service.source.type_mapping import duckdb_type
from etl_service.state import StateStore

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migrations_run_at_start_and_are_idempotent(backend, pg_url, tmp_path):
    url = pg_url if backend == "postgresql" else f"sqlite:///{tmp_path / 'state.db'}"
    for _ in range(2):
        store = StateStore(url)
        store.close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert {
        "sync_runs",
        "table_state",
        "dead_letters",
        "schema_changes",
        "etl_commands",
        "etl_worker",
    } <= tables


def test_type_mapping_is_faithful():
    assert duckdb_type(mssql.MONEY()) == "DECIMAL(19,4)"
    assert duckdb_type(mssql.SMALLMONEY()) == "DECIMAL(10,4)"
    assert duckdb_type(mssql.UNIQUEIDENTIFIER()) == "UUID"
    assert duckdb_type(mssql.DATETIMEOFFSET()) == "TIMESTAMPTZ"
    assert duckdb_type(mssql.DATETIME2()) == "TIMESTAMP"
    assert duckdb_type(mssql.BIT()) == "BOOLEAN"
    assert duckdb_type(mssql.TINYINT()) == "UTINYINT"
    assert duckdb_type(sa.Numeric(18, 4)) == "DECIMAL(18,4)"
    assert duckdb_type(sa.Numeric()) is None  # unbounded: the extractor's DECIMAL(38,10)
    assert duckdb_type(postgresql.UUID()) == "UUID"
    assert duckdb_type(postgresql.TIMESTAMP(timezone=True)) == "TIMESTAMPTZ"
    assert duckdb_type(sa.Integer()) == "INTEGER"
    assert duckdb_type(sa.BigInteger()) == "BIGINT"
    assert duckdb_type(postgresql.DOUBLE_PRECISION()) == "DOUBLE"
    assert duckdb_type(sa.REAL()) == "REAL"


def test_postgres_types_land_as_declared(pg_url, make_engine):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE typed (id bigint PRIMARY KEY, price numeric(18,4), ref uuid,"
                " at timestamptz, ok boolean, small smallint, updated_at timestamp(6))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO typed VALUES (1, 12345678901234.5678,"
                " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-01-02 03:04:05.123456+02', true,"
                " 7, '2026-01-01 00:00:00.000001')"
            )
        )
    etl = make_engine(TABLES_TO_SYNC="typed")
    assert etl.run_cycle().status == "success"
    assert dict(etl.warehouse.columns("typed")) == {
        "id": "BIGINT",
        "price": "DECIMAL(18,4)",
        "ref": "UUID",
        "at": "TIMESTAMP WITH TIME ZONE",
        "ok": "BOOLEAN",
        "small": "SMALLINT",
        "updated_at": "TIMESTAMP",
    }
    row = etl.warehouse.con.execute(
        'SELECT price::VARCHAR, ref::VARCHAR, epoch_us("at"), updated_at::VARCHAR FROM typed'
    ).fetchall()
    assert row == [
        (
            "12345678901234.5678",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            1767315845123456,
            "2026-01-01 00:00:00.000001",
        )
    ]
    engine.dispose()


def _cli_env(pg_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The ETL's settings for a PostgreSQL source and state store, plus `extra`."""
    return {
        "SOURCE_URL": pg_url,
        "DATABASE_URL": pg_url,
        "DATA_DIR": str(data_dir),
        "STORAGE_URL": (data_dir / "store").resolve().as_uri(),
        **extra,
    }


def _cli(env: dict[str, str], *args: str, monkeypatch, capsys) -> tuple[int, str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = cli.main(list(args))
    return code, capsys.readouterr().out


def test_cli_sync_status_dlq_and_backfill(pg_url, data_dir, monkeypatch, capsys):
    source = create_demo_source(pg_url)
    env = _cli_env(
        pg_url,
        data_dir,
        TABLES_TO_SYNC="inventory,ghost",
        RETRY_ATTEMPTS="2",
        RETRY_BASE_SECONDS="0.01",
        LOG_LEVEL="WARNING",
    )
    code, out = _cli(env, "sync", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1  # "ghost" does not exist: partial
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "partial" and "ghost" in result["failed_tables"]

    code, out = _cli(env, "dlq", "list", monkeypatch=monkeypatch, capsys=capsys)
    [entry] = json.loads(out)
    assert entry["table_name"] == "ghost"

    code, out = _cli(env, "status", monkeypatch=monkeypatch, capsys=capsys)
    status = json.loads(out)
    assert status["open_dead_letters"] == 1
    [inv] = [t for t in status["tables"] if t["table_name"] == "inventory"]
    assert inv["row_count"] == 1000 and inv["lag_seconds"] is not None

    with source.begin() as conn:
        conn.execute(sa.text("CREATE TABLE ghost (id int PRIMARY KEY, updated_at timestamp)"))
    code, out = _cli(env, "dlq", "retry", str(entry["id"]), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, out
    code, out = _cli(env, "dlq", "list", monkeypatch=monkeypatch, capsys=capsys)
    assert json.loads(out) == []

    code, out = _cli(env, "dlq", "discard", "999", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1

    with source.begin() as conn:
        conn.execute(sa.text("UPDATE inventory SET quantity = 1"))  # no updated_at bump
    code, out = _cli(env, "backfill", "inventory", monkeypatch=monkeypatch, capsys=capsys)
    backfill = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and backfill["rows"]["inventory"]["mode"] == "full"
    code, out = _cli(env, "sync", "--full-refresh", monkeypatch=monkeypatch, capsys=capsys)
    assert json.loads(out.strip().splitlines()[-1])["status"] == "success"
    source.dispose()


def test_cli_output_is_clean_json_on_stdout_and_logs_go_to_stderr(pg_url, data_dir):
    """`analytics-etl sync | jq` and `status | jq` work at the default log level."""
    create_demo_source(pg_url).dispose()
    env = {**os.environ, **_cli_env(pg_url, data_dir, TABLES_TO_SYNC="inventory", LOG_LEVEL="INFO")}
    etl = str(BIN / "analytics-etl")
    outputs = {}
    for command in ("sync", "status"):
        done = subprocess.run(
            [etl, command], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        outputs[command] = json.loads(done.stdout)  # all of stdout is one JSON document
        if command == "sync":
            assert '"event": "sync_cycle_finished"' in done.stderr  # INFO lines: stderr
    assert outputs["sync"]["status"] == "success"
    assert outputs["status"]["runs"][0]["status"] == "success"


def test_scheduler_stops_cleanly_on_sigterm(pg_url, data_dir):
    source = create_demo_source(pg_url)
    env = {
        **os.environ,
        **_cli_env(
            pg_url,
            data_dir,
            TABLES_TO_SYNC="inventory,orders",
            SYNC_INTERVAL_SECONDS="1",
            ETL_METRICS_PORT="0",
        ),
    }
    proc = subprocess.Popen(
        [str(BIN / "analytics-etl"), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        state = StateStore(pg_url)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            runs = state.recent_runs(5)
            if sum(r["status"] == "success" for r in runs) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.3)
        else:
            pytest.fail("the scheduler did not run two cycles in time")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "scheduler_stopped" in out
        assert all(r["status"] != "running" for r in state.recent_runs(50))
        state.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        source.dispose()
