"""Maintenance while the worker runs: every data-changing command goes through
`analytics-etl run` (a real process; PostgreSQL state and source, SeaweedFS
store), read-only commands work meanwhile, a second worker is refused in one
line, and a killed worker neither loses a command nor runs one twice.

These are the runbook's recipes (docs/runbook.md, "Maintenance while the
worker runs"), run as written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl_service.control.commands import CommandQueue
from etl_service.demo_source import create_demo_source
from etl_service.state import StateStore
from testsupport.processes import stop_process
from testsupport.snapshots import (
    ETL,
    fetch_current_verified,
    run_etl,
    snapshot_rows,
    source_rows,
    store_from_env,
    wait_for,
)

LOG_QUIET = {"LOG_LEVEL": "WARNING", "LOG_JSON": "true"}


@pytest.fixture
def etl_env(pg_url: str, s3_env: dict[str, str], data_dir: Path) -> dict[str, str]:
    create_demo_source(pg_url).dispose()  # "ghost" is in TABLES_TO_SYNC only: dead-lettered
    return {
        **s3_env,
        **LOG_QUIET,
        "SOURCE_URL": pg_url.replace("postgresql+psycopg://", "postgres://"),
        "DATABASE_URL": pg_url,
        "DATA_DIR": str(data_dir),
        "TABLES_TO_SYNC": "inventory,products,orders,ghost",
        "SYNC_INTERVAL_SECONDS": "3600",  # one cycle at start; the rest are commands
        "SYNC_SETTLE_SECONDS": "0",
        "RETRY_ATTEMPTS": "1",
        "ETL_METRICS_PORT": "0",
    }


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([ETL, "run"], env={**os.environ, **env}, stdout=out, stderr=out)


@pytest.fixture
def worker(
    etl_env: dict[str, str], pg_url: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    proc = _start_worker(etl_env, tmp_path / "worker.log")
    state = StateStore(pg_url)
    try:
        wait_for(lambda: any(r["status"] != "running" for r in state.recent_runs(5)), 120)
        yield proc
    finally:
        stop_process(proc, timeout=30)
        state.close()


def _ok(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return document


def test_commands_run_through_the_running_worker(worker, etl_env, pg_url, tmp_path):
    source = sa.create_engine(pg_url)
    store = store_from_env(etl_env)

    # Read-only commands work while the worker holds the working DuckDB.
    status = json.loads(run_etl(["status", "--json"], etl_env).stdout)
    assert status["state"].startswith("postgresql+psycopg://")  # it says which state it read
    [ghost] = json.loads(run_etl(["dlq", "list"], etl_env).stdout)
    assert ghost["table_name"] == "ghost"
    [first] = json.loads(run_etl(["versions"], etl_env).stdout)
    assert first["current"]

    # A second worker is refused at once, in one line naming the holder.
    second = run_etl(["run"], etl_env, timeout=60)
    assert second.returncode == 1
    [line] = second.stderr.splitlines()
    assert f"(PID {worker.pid})" in line and "since" in line and "analytics-etl run" in line

    # backfill: a change the cursor cannot see (no updated_at bump) arrives.
    with source.begin() as conn:
        conn.execute(sa.text("UPDATE inventory SET quantity = quantity + 7"))
    result = run_etl(["backfill", "inventory"], etl_env)
    backfill = _ok(result)
    assert "queued for `analytics-etl run`" in result.stderr
    assert backfill["rows"]["inventory"]["mode"] == "full"
    manifest, plain = fetch_current_verified(store, tmp_path / "fetched")
    columns, expected = source_rows(source, "inventory")
    assert sorted(snapshot_rows(plain, "inventory", columns)) == sorted(expected)
    second_version = manifest.version

    # sync --table and sync --full-refresh, reconcile (a hard delete disappears).
    assert _ok(run_etl(["sync", "--table", "orders"], etl_env))["status"] == "success"
    with source.begin() as conn:
        conn.execute(sa.text("DELETE FROM products WHERE id = (SELECT min(id) FROM products)"))
    assert _ok(run_etl(["reconcile", "--table", "products"], etl_env))["status"] == "success"
    manifest, plain = fetch_current_verified(store, tmp_path / "fetched")
    columns, expected = source_rows(source, "products")
    assert sorted(snapshot_rows(plain, "products", columns)) == sorted(expected)
    refresh = run_etl(["sync", "--full-refresh"], etl_env)
    assert refresh.returncode == 1  # "ghost" still fails: partial, said in one line
    assert json.loads(refresh.stdout.splitlines()[-1])["status"] == "partial"
    assert "sync failed" in refresh.stderr.splitlines()[-1]

    # dlq discard: the entry is gone from the open list.
    [ghost] = json.loads(run_etl(["dlq", "list"], etl_env).stdout)
    assert _ok(run_etl(["dlq", "discard", str(ghost["id"])], etl_env))["status"] == "discarded"
    assert json.loads(run_etl(["dlq", "list"], etl_env).stdout) == []

    # rollback: current at once, and it holds over a cycle with no source change.
    result = run_etl(["rollback", first["version"]], etl_env)
    assert _ok(result)["version"] == first["version"]
    assert "holds until the source changes" in result.stderr
    assert _ok(run_etl(["sync", "--table", "inventory"], etl_env))["version"] == first["version"]
    manifest, _ = fetch_current_verified(store, tmp_path / "fetched")
    assert manifest.version == first["version"] != second_version

    # --no-wait returns the id; `commands` lists every command with its outcome.
    submitted = run_etl(["sync", "--table", "orders", "--no-wait"], etl_env)
    command_id = int(submitted.stdout.strip())
    listed = json.loads(run_etl(["commands"], etl_env).stdout)
    assert listed["worker"]["pid"] == worker.pid
    assert command_id in [c["id"] for c in listed["commands"]]
    wait_for(
        lambda: (
            next(
                c
                for c in json.loads(run_etl(["commands"], etl_env).stdout)["commands"]
                if c["id"] == command_id
            )["status"]
            == "done"
        ),
        120,
    )
    kinds = [c["kind"] for c in listed["commands"]]
    assert {"backfill", "sync", "reconcile", "dlq-discard", "rollback"} <= set(kinds)
    assert worker.poll() is None  # the worker ran all of it and is still up
    source.dispose()


def test_a_killed_worker_loses_no_command_and_runs_none_twice(etl_env, pg_url, tmp_path):
    state = StateStore(pg_url)
    queue = CommandQueue(state.engine)
    # A command a previous worker was running when it died: failed, with the reason.
    interrupted = queue.submit("backfill", {"table": "orders"})
    assert queue.claim(interrupted, "gone-host:1")

    proc = _start_worker(etl_env, tmp_path / "worker.log")
    try:
        wait_for(lambda: any(r["status"] != "running" for r in state.recent_runs(5)), 120)
        dead = queue.get(interrupted)
        assert dead is not None and dead.status == "failed" and "interrupted" in (dead.error or "")

        proc.send_signal(signal.SIGSTOP)  # alive and holding the lock, but not working
        submitted = run_etl(["backfill", "inventory", "--no-wait"], etl_env)
        pending = int(submitted.stdout.strip())
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        command = queue.get(pending)
        assert command is not None and command.status == "pending"

        # No worker: a waiting CLI does not hang; a read-only command says who holds nothing.
        listed = json.loads(run_etl(["commands"], etl_env).stdout)
        assert listed["worker"] is None

        proc = _start_worker(etl_env, tmp_path / "worker.log")
        wait_for(lambda: (c := queue.get(pending)) is not None and c.finished, 120)
        done = queue.get(pending)
        assert done is not None and done.status == "done", done
        backfills = [r for r in state.recent_runs(50) if r["kind"] == "backfill"]
        assert len(backfills) == 1  # run once, by the second worker
    finally:
        stop_process(proc, timeout=30)
        state.close()


def test_a_command_waiting_on_a_worker_that_dies_ends_with_one_line(etl_env, pg_url, tmp_path):
    proc = _start_worker(etl_env, tmp_path / "worker.log")
    state = StateStore(pg_url)
    try:
        wait_for(lambda: any(r["status"] != "running" for r in state.recent_runs(5)), 120)
        proc.send_signal(signal.SIGSTOP)
        waiting = subprocess.Popen(
            [ETL, "sync", "--table", "orders"],
            env={**os.environ, **etl_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: CommandQueue(state.engine).recent(1), 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        _, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 1
        assert "stays pending" in err.splitlines()[-1]
        assert "Traceback" not in err
    finally:
        stop_process(proc, timeout=30)
        state.close()
