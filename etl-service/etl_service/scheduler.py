"""The long-running worker: one sync cycle every SYNC_INTERVAL_SECONDS.

No overlapping cycles (max_instances=1), missed ticks coalesce into one, and
SIGTERM/SIGINT stop cleanly: the running cycle finishes the table it is on
and then abandons the rest (no publish, no watermark change), so the next
start re-reads from the last committed state.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.blocking import BlockingScheduler

from analytics_shared.logging_config import get_logger
from etl_service.ops.monitoring import CycleMonitor
from etl_service.sync import SyncEngine

__all__ = ["build_scheduler", "run_scheduler"]

log = get_logger(__name__)


def build_scheduler(
    engine: SyncEngine, interval_seconds: float, monitor: CycleMonitor | None = None
) -> BlockingScheduler:
    def tick() -> None:
        result = engine.run_cycle()
        if monitor is not None:
            monitor.observe(result)

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
    return scheduler


def run_scheduler(
    engine: SyncEngine, interval_seconds: float, monitor: CycleMonitor | None = None
) -> None:
    scheduler = build_scheduler(engine, interval_seconds, monitor)

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
