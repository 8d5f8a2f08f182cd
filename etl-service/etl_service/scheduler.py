"""The long-running worker: one sync cycle every SYNC_INTERVAL_SECONDS."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from types import FrameType

from analytics_shared.logging_config import get_logger
from apscheduler.schedulers.blocking import BlockingScheduler

from etl_service.sync import SyncEngine

__all__ = ["run_scheduler"]

log = get_logger(__name__)


def run_scheduler(engine: SyncEngine, interval_seconds: int) -> None:
    scheduler = BlockingScheduler(timezone=UTC)
    scheduler.add_job(
        engine.run_cycle,
        "interval",
        seconds=interval_seconds,
        next_run_time=datetime.now(UTC),  # first cycle right away
        max_instances=1,  # never overlap cycles
        coalesce=True,  # missed ticks collapse into one
        misfire_grace_time=interval_seconds,
        id="sync",
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        # wait=True lets the running cycle finish; its publish is atomic either way.
        scheduler.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("scheduler_started", interval_seconds=interval_seconds)
    scheduler.start()
    log.info("scheduler_stopped")
