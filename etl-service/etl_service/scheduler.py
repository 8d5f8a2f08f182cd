"""The long-running worker: one sync cycle every SYNC_INTERVAL_SECONDS.

No overlapping cycles (max_instances=1), missed ticks coalesce into one, and
SIGTERM/SIGINT stop cleanly: the running cycle finishes the table it is on
and then abandons the rest (no publish, no watermark change), so the next
start re-reads from the last committed state.

With a `WorkerControl`, queued commands (etl_service.control) run between
cycles: a second job looks every COMMAND_POLL_SECONDS and runs them when no
cycle is running (cycles and commands share one lock, so they never overlap).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

from apscheduler.schedulers.blocking import BlockingScheduler

from analytics_shared.logging_config import get_logger
from etl_service.errors import WorkerLockLost
from etl_service.ops.monitoring import CycleMonitor
from etl_service.sync import SyncEngine

if TYPE_CHECKING:
    from etl_service.control.worker import WorkerControl

__all__ = ["COMMAND_POLL_SECONDS", "build_scheduler", "run_scheduler"]

COMMAND_POLL_SECONDS = 1.0

log = get_logger(__name__)


def build_scheduler(
    engine: SyncEngine,
    interval_seconds: float,
    monitor: CycleMonitor | None = None,
    control: WorkerControl | None = None,
) -> BlockingScheduler:
    cycle_lock = threading.Lock()

    def tick() -> None:
        with cycle_lock:
            result = engine.run_cycle()
        if monitor is not None:
            monitor.observe(result)

    def commands() -> None:
        assert control is not None
        if not control.heartbeat():
            # The lock is gone: stop the way SIGTERM does (the running cycle
            # abandons, the main thread waits for it); run_scheduler then fails,
            # so the process exits non-zero and its supervisor restarts it.
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if cycle_lock.acquire(blocking=False):  # a cycle is running: look again soon
            try:
                control.between_cycles()
            finally:
                cycle_lock.release()

    scheduler = BlockingScheduler(timezone=UTC)
    scheduler.add_job(
        tick,
        "interval",
        seconds=interval_seconds,
        next_run_time=datetime.now(UTC),  # first cycle right away
        max_instances=1,  # never overlap cycles
        coalesce=True,  # missed ticks collapse into one
        misfire_grace_time=max(1, int(interval_seconds)),
        id="sync",
    )
    if control is not None:
        scheduler.add_job(
            commands,
            "interval",
            seconds=COMMAND_POLL_SECONDS,
            max_instances=1,
            coalesce=True,
            id="commands",
        )
    return scheduler


def run_scheduler(
    engine: SyncEngine,
    interval_seconds: float,
    monitor: CycleMonitor | None = None,
    control: WorkerControl | None = None,
) -> None:
    scheduler = build_scheduler(engine, interval_seconds, monitor, control)
    # APScheduler's per-run chatter ("Running job ...") only at DEBUG: the
    # command poll runs every second.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        engine.stop_requested.set()  # the cycle abandons at the next table boundary
        # wait=True: return only when the running cycle has finished or abandoned.
        scheduler.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("scheduler_started", interval_seconds=interval_seconds)
    scheduler.start()
    log.info("scheduler_stopped")
    if control is not None and control.lock_lost:
        raise WorkerLockLost(
            "the state database dropped the worker lock (a restart or an outage of"
            " DATABASE_URL); the worker stopped so that two never run at once: start it"
            " again once the database is back"
        )
