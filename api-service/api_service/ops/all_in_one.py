"""All-in-one mode (`analytics-api serve --with-etl`, ALL_IN_ONE=true): the
ETL's scheduler runs in a thread of the API's one worker, for the smallest
plans (one 512 MB container for both services).

One budget for both: the ETL's share (`etl_share`) is the reserve the API's
budget leaves aside (ops/memory_budget.py), and the ETL sizes its working
DuckDB from that share (etl_service/ops/memory_budget.py, embedded). A thread
rather than a second process because the two share the interpreter and the
libraries (DuckDB, Arrow, the app's own modules): a separate `analytics-etl
run` process in the same container costs its own copy of them (measured in
benchmarks/README.md, "All-in-one"). The ETL's work runs in DuckDB and
ConnectorX, which release the GIL, so the API keeps answering during a cycle.

The ETL keeps its sync lock, so a second replica (or a separate ETL service)
never runs a cycle at the same time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from analytics_shared.logging_config import get_logger
from analytics_shared.memory_limit import MemoryLimit

if TYPE_CHECKING:
    from apscheduler.schedulers.blocking import BlockingScheduler

    from etl_service.ops.monitoring import CycleMonitor
    from etl_service.sync import SyncEngine

__all__ = ["EmbeddedEtl", "etl_share"]

log = get_logger(__name__)

MIB = 2**20
SHARE_FRACTION = 0.25
MIN_SHARE = 128 * MIB


def etl_share(limit: MemoryLimit) -> int:
    """The bytes of the container the embedded ETL gets."""
    return max(MIN_SHARE, int(limit.bytes * SHARE_FRACTION))


class EmbeddedEtl:
    """The ETL's scheduler in a background thread of this process."""

    def __init__(self, share: int) -> None:
        self.share = share
        self._engine: SyncEngine | None = None
        self._monitor: CycleMonitor | None = None
        self._scheduler: BlockingScheduler | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from analytics_shared.settings import load_settings
        from etl_service.ops.monitoring import CycleMonitor
        from etl_service.scheduler import build_scheduler
        from etl_service.settings import EtlSettings
        from etl_service.sync import SyncEngine

        settings = load_settings(EtlSettings)
        self._engine = SyncEngine.from_settings(settings, progress=False, memory_share=self.share)
        self._monitor = CycleMonitor(settings, self._engine.state)
        if self._engine.memory_budget is not None:
            self._monitor.metrics.show_memory_budget(self._engine.memory_budget.as_dict())
        self._monitor.start()
        self._scheduler = build_scheduler(
            self._engine, settings.sync_interval_seconds, self._monitor
        )
        self._thread = threading.Thread(
            target=self._scheduler.start, name="etl-scheduler", daemon=True
        )
        self._thread.start()
        log.info("embedded_etl_started", share=self.share)

    def stop(self) -> None:
        """Finish or abandon the running cycle (as the scheduler does on SIGTERM)."""
        if self._engine is not None:
            self._engine.stop_requested.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._monitor is not None:
            self._monitor.stop()
        if self._engine is not None:
            self._engine.close()
        log.info("embedded_etl_stopped")
