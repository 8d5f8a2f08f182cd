"""The scheduler's documented behaviours (docs/architecture.md, "Scheduling"):
SIGTERM mid-cycle finishes the table in hand and records the run `abandoned`
without publishing or moving a watermark; missed ticks coalesce into one run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_EXECUTED

from analytics_shared.manifest import MANIFEST_KEY, Manifest
from analytics_shared.object_store import LocalObjectStore
from etl_service.demo_source import create_demo_source
from etl_service.scheduler import build_scheduler
from etl_service.state import StateStore
from etl_service.sync import CycleResult

BIN = Path(sys.executable).parent


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the ETL exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _worker(pg_url: str, data_dir: Path, store: LocalObjectStore) -> tuple[dict, subprocess.Popen]:
    env = {
        **os.environ,
        "SOURCE_URL": pg_url,
        "DATABASE_URL": pg_url,
        "DATA_DIR": str(data_dir),
        "STORAGE_URL": store.root.resolve().as_uri(),
        "TABLES_TO_SYNC": "inventory,orders",  # in this order
        "SYNC_INTERVAL_SECONDS": "1",
        "ETL_METRICS_PORT": "0",
    }
    proc = subprocess.Popen(
        [str(BIN / "analytics-etl"), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return env, proc


def _block_a_cycle(source: sa.Engine, state: StateStore, proc: subprocess.Popen) -> sa.Connection:
    """After a first successful cycle, hold the next one inside its first table
    (inventory, locked here) with a committed change in orders that a finished
    cycle would publish; the caller rolls the returned connection back."""
    _wait_for(
        lambda: any(r["status"] == "success" for r in state.recent_runs(5)),
        90,
        "a first successful cycle",
        proc,
    )
    locker = source.connect()
    locker.execute(sa.text("BEGIN"))
    locker.execute(sa.text("LOCK TABLE inventory IN ACCESS EXCLUSIVE MODE"))
    with source.begin() as conn:
        conn.execute(
            sa.text("UPDATE orders SET status = 'cancelled', updated_at = now() WHERE id <= 3")
        )
    waiting = sa.text(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'inventory'::regclass"
    )
    with source.connect() as conn:
        _wait_for(lambda: conn.execute(waiting).scalar(), 60, "a cycle blocked on inventory", proc)
    return locker


@dataclass
class _Blocked:
    env: dict[str, str]
    proc: subprocess.Popen
    state: StateStore
    store: LocalObjectStore
    locker: sa.Connection


@pytest.fixture
def blocked(pg_url: str, data_dir: Path) -> Iterator[_Blocked]:
    """A worker (`analytics-etl run`) whose second cycle is held in its first table."""
    source = create_demo_source(pg_url)
    store = LocalObjectStore(data_dir / "store")
    env, proc = _worker(pg_url, data_dir, store)
    state = StateStore(pg_url)
    locker = None
    try:
        locker = _block_a_cycle(source, state, proc)
        yield _Blocked(env, proc, state, store, locker)
    finally:
        if locker is not None:
            locker.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        state.close()
        source.dispose()


def test_sigterm_mid_cycle_records_the_run_abandoned_and_publishes_nothing(blocked):
    state, store, proc = blocked.state, blocked.store, blocked.proc
    published = Manifest.from_json(store.get_bytes(MANIFEST_KEY)[0]).version
    tables = state.table_states()  # watermarks, sync times, row counts
    last_run = state.recent_runs(1)[0]
    assert last_run["status"] == "running"

    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the stop flag is set while the cycle is still in its first table
    blocked.locker.execute(sa.text("ROLLBACK"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out

    run = next(r for r in state.recent_runs(10) if r["id"] == last_run["id"])
    assert (run["status"], run["error"]) == ("abandoned", "shutdown")
    assert state.recent_runs(1)[0]["id"] == run["id"]  # no cycle after it
    assert '"event": "sync_cycle_abandoned"' in out
    # nothing published, no watermark moved: the next start re-reads the same deltas
    assert Manifest.from_json(store.get_bytes(MANIFEST_KEY)[0]).version == published
    assert state.table_states() == tables


def test_a_run_killed_mid_cycle_is_closed_by_the_next_cycle(blocked):
    """kill -9 records nothing: the run stayed "running" in `status` forever.
    The next cycle, holding the sync lock, closes it as abandoned."""
    state, proc = blocked.state, blocked.proc
    killed = state.recent_runs(1)[0]
    assert killed["status"] == "running"
    proc.kill()
    proc.communicate(timeout=30)
    blocked.locker.execute(sa.text("ROLLBACK"))
    assert state.recent_runs(1)[0] == killed  # nothing recorded it

    again = subprocess.run(
        [str(BIN / "analytics-etl"), "sync"],
        env=blocked.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    runs = {r["id"]: r for r in state.recent_runs(10)}
    assert runs[killed["id"]]["status"] == "abandoned"
    assert runs[killed["id"]]["error"].startswith("interrupted:")
    assert runs[killed["id"]]["finished_at"] is not None
    assert not [r for r in runs.values() if r["status"] == "running"]
    latest = state.recent_runs(1)[0]
    assert latest["id"] > killed["id"] and latest["status"] == "success"
    assert "interrupted_runs_abandoned" in again.stdout + again.stderr
    # The killed cycle's change is published by the next one.
    assert latest["published_version"] is not None


class _QuickEngine:
    """Stands in for the SyncEngine: records when each cycle ran."""

    def __init__(self) -> None:
        self.cycles = 0
        self.stop_requested = threading.Event()

    def run_cycle(self) -> CycleResult:
        self.cycles += 1
        return CycleResult(run_id=self.cycles, status="success")


def test_missed_ticks_coalesce_into_one_cycle():
    engine = _QuickEngine()
    scheduler = build_scheduler(engine, 0.5)  # type: ignore[arg-type]
    ran: list[datetime] = []  # the tick each executed cycle was scheduled for
    scheduler.add_listener(lambda event: ran.append(event.scheduled_run_time), EVENT_JOB_EXECUTED)
    runner = threading.Thread(target=scheduler.start, daemon=True)
    runner.start()
    try:
        _wait_for(lambda: engine.cycles >= 1, 30, "the first cycle")
        # The scheduler wakes 3 s late (as after a suspended container or a stalled
        # host): six ticks are due at once, two of them within the misfire grace.
        scheduler.pause()
        frozen_at = datetime.now(UTC)
        time.sleep(3)
        resumed_at = datetime.now(UTC)
        scheduler.resume()
        time.sleep(0.3)  # before the next regular tick could make it two
    finally:
        scheduler.shutdown(wait=True)
        runner.join(timeout=10)
    missed = [t for t in ran if frozen_at < t <= resumed_at]
    assert len(missed) == 1, ran  # the missed ticks ran as one cycle
