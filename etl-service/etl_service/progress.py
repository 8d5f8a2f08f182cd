"""Progress of long loads: rows done, rows/s and the time left.

A full load (and so a backfill) streams Arrow batches; `LoadProgress` counts
them as they pass (batches pass through untouched) and, every
PROGRESS_LOG_SECONDS, logs one `load_progress` line and hands the same text to
a sink (the worker writes it into the command's row, which the waiting CLI
prints). The estimate of the table's size comes from the source's statistics
(PostgreSQL `pg_class.reltuples`, SQL Server `sys.dm_db_partition_stats`,
SQLite a count); without one there is no time left, only the rate. On a
terminal a rich progress bar shows the same.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pyarrow as pa

from analytics_shared.logging_config import get_logger

__all__ = ["LoadProgress", "ProgressSink"]

log = get_logger(__name__)

ProgressSink = Callable[[str], None]


class LoadProgress:
    def __init__(
        self,
        table: str,
        estimate: int | None,
        *,
        interval: float,
        bar: bool = False,
        sink: ProgressSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.estimate = estimate if estimate and estimate > 0 else None
        self.interval = interval
        self.bar = bar
        self.sink = sink
        self.clock = clock
        self.rows = 0

    def eta_seconds(self, rate: float) -> float | None:
        if self.estimate is None or rate <= 0 or self.rows > self.estimate:
            return None
        return (self.estimate - self.rows) / rate

    def describe(self, elapsed: float) -> str:
        rate = self.rows / max(elapsed, 1e-6)
        done = f"{self.rows:,}"
        if self.estimate is not None:
            share = min(100.0, 100 * self.rows / self.estimate)
            done += f" of ~{self.estimate:,} rows ({share:.0f}%)"
        else:
            done += " rows"
        eta = self.eta_seconds(rate)
        left = f", about {eta:,.0f} s left" if eta is not None else ""
        return f"full load {self.table}: {done}, {rate:,.0f} rows/s{left}"

    def report(self, elapsed: float) -> None:
        rate = self.rows / max(elapsed, 1e-6)
        eta = self.eta_seconds(rate)
        log.info(
            "load_progress",
            table=self.table,
            rows=self.rows,
            estimated_rows=self.estimate,
            rows_per_s=round(rate),
            eta_s=round(eta, 1) if eta is not None else None,
        )
        if self.sink is not None:
            try:
                self.sink(self.describe(elapsed))
            except Exception as exc:  # progress must never fail the load
                log.warning("load_progress_not_recorded", error=str(exc))

    def wrap(self, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(reader.schema, self._batches(reader))

    def _batches(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        started = last = self.clock()
        with self._bar() as advance:
            for batch in reader:
                self.rows += batch.num_rows
                advance(batch.num_rows)
                now = self.clock()
                if now - last >= self.interval:
                    last = now
                    self.report(now - started)
                yield batch

    @contextlib.contextmanager
    def _bar(self) -> Iterator[Callable[[int], None]]:
        if not self.bar:
            yield lambda _rows: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("full load {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as bars:
            task = bars.add_task(self.table, total=self.estimate)
            yield lambda rows: bars.advance(task, rows)
