"""One sync cycle: source -> working DuckDB -> snapshot -> store -> state.

A cycle holds the sync lock (one replica at a time), opens one snapshot of the
source, syncs each table (etl_service.incremental) with retries on transient
errors, publishes when something changed, and records the run and the new
watermarks last. A table that still fails after its retries goes to the
dead-letter queue; the other tables carry on and the next cycle runs as usual.

Crash safety: watermarks are committed after the publish, so a crash anywhere
before re-reads the same delta and the merge makes that harmless. A marker
file next to the working DuckDB remembers merged-but-unpublished changes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import ColumnSchema, TableInfo
from etl_service.export import export_snapshot
from etl_service.incremental import TableOutcome, TableSyncer
from etl_service.lock import SyncLock
from etl_service.publisher import Publisher
from etl_service.retry import RetryError, RetryPolicy, retry
from etl_service.settings import EtlSettings
from etl_service.source import MssqlTls, Source, SourceSnapshot
from etl_service.state import StateStore, TableUpdate
from etl_service.tables import TableSpec, table_specs
from etl_service.warehouse import Warehouse

__all__ = ["CycleResult", "SyncEngine"]

log = get_logger(__name__)


@dataclass
class CycleResult:
    run_id: int | None
    # success | partial (some tables failed) | failed | skipped (lock held
    # elsewhere) | abandoned (shutdown mid-cycle)
    status: str
    rows: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    published: bool = False
    error: str | None = None
    failed_tables: dict[str, str] = field(default_factory=dict)
    duration_seconds: float = 0.0


class SyncEngine:
    """Owns the long-lived pieces of the ETL; `run_cycle` is one scheduled tick."""

    def __init__(self, settings: EtlSettings, *, progress: bool | None = None) -> None:
        self.settings = settings
        self.specs = table_specs(settings.tables_to_sync, settings.table_config)
        self.source = Source(
            settings.resolved_source_url,
            timezone=settings.source_timezone,
            tls=MssqlTls(settings.mssql_trust_server_certificate, settings.mssql_ca_file),
        )
        self.state = StateStore(settings.resolved_database_url)
        self.warehouse = Warehouse(settings.working_db_path)
        self.publisher = Publisher.from_settings(settings)
        self.lock = SyncLock(self.state.engine, Path(settings.data_dir) / "etl_sync.lock")
        self.policy = RetryPolicy(
            settings.retry_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )
        self.syncer = TableSyncer(
            self.source,
            self.warehouse,
            batch_size=settings.batch_size,
            lookback_seconds=settings.sync_lookback_seconds,
            progress=progress,
        )
        # Set by the scheduler on SIGTERM/SIGINT: the cycle stops between tables.
        self.stop_requested = threading.Event()

    def close(self) -> None:
        self.warehouse.close()
        self.source.close()
        self.state.close()

    def spec(self, table: str) -> TableSpec:
        for spec in self.specs:
            if spec.name == table.lower():
                return spec
        raise ValueError(f"table {table!r} is not in TABLES_TO_SYNC")

    # -- the cycle ------------------------------------------------------------

    def run_cycle(
        self,
        *,
        full_refresh: bool = False,
        tables: list[str] | None = None,
        reconcile: bool = False,
        kind: str = "sync",
    ) -> CycleResult:
        """One cycle over all tables (or `tables`); never raises for data errors."""
        started = time.monotonic()
        specs = [self.spec(t) for t in tables] if tables else list(self.specs)
        try:
            with self.lock.hold() as held:
                if not held:
                    log.info("sync_skipped_lock_held")
                    return CycleResult(run_id=None, status="skipped")
                result = self._locked_cycle(specs, full_refresh, reconcile, kind)
        except Exception as exc:  # the state store itself is unreachable
            log.exception("sync_cycle_crashed")
            result = CycleResult(run_id=None, status="failed", error=_describe(exc))
        result.duration_seconds = time.monotonic() - started
        log.info(
            "sync_cycle_finished",
            run_id=result.run_id,
            status=result.status,
            version=result.version,
            published=result.published,
            failed=sorted(result.failed_tables),
            duration_s=round(result.duration_seconds, 3),
        )
        return result

    def _retry(self, fn: Any, what: str, **kwargs: Any) -> Any:
        value, _ = retry(
            fn,
            self.policy,
            what=what,
            should_stop=self.stop_requested.is_set,
            sleep=self.stop_requested.wait,
            **kwargs,
        )
        return value

    def _locked_cycle(
        self, specs: list[TableSpec], full_refresh: bool, reconcile: bool, kind: str
    ) -> CycleResult:
        started_at = datetime.now(UTC)
        run_id: int = self._retry(lambda: self.state.start_run(kind), "state: start run")
        result = CycleResult(run_id=run_id, status="running")
        try:
            self._retry(self.warehouse.ensure_usable, "warehouse: open")
            snapshot = self._retry(
                lambda: self.source.open_snapshot(self.settings.sync_settle_seconds),
                "source: open snapshot",
            )
        except RetryError as err:
            return self._fail_cycle(result, err, started_at)
        marker = self.warehouse.unpublished_marker
        unpublished_before = marker.exists()
        marker.touch()
        outcomes: dict[str, TableOutcome] = {}
        holder = [snapshot]
        try:
            for spec in specs:
                if self.stop_requested.is_set():
                    result.status = "abandoned"
                    break
                try:
                    outcomes[spec.name] = self._sync_table(spec, holder, full_refresh, reconcile)
                except RetryError as err:
                    result.failed_tables[spec.name] = str(err)
                    self.state.dead_letter(run_id, spec.name, str(err), err.attempts)
                    log.error("table_dead_lettered", table=spec.name, error=str(err))
        finally:
            holder[0].close()
        result.rows = {name: o.summary() for name, o in outcomes.items()}
        if result.status == "abandoned":
            # Merged tables stay merged (the marker makes the next cycle publish);
            # watermarks stay put, so the next cycle re-reads the same deltas.
            self.state.finish_run(run_id, "abandoned", result.rows, error="shutdown")
            log.warning("sync_cycle_abandoned", run_id=run_id, done=sorted(outcomes))
            return result

        changed = any(o.changed for o in outcomes.values())
        try:
            if outcomes and (changed or unpublished_before or self.publisher.current() is None):
                manifest = self._retry(lambda: self._publish(outcomes), "store: publish snapshot")
                result.version, result.published = manifest.version, True
            else:
                current = self.publisher.current()
                result.version = current.version if current else None
        except RetryError as err:
            return self._fail_cycle(result, err, started_at)
        marker.unlink(missing_ok=True)

        result.status = "success" if not result.failed_tables else "partial"
        if result.failed_tables and not outcomes:
            result.status = "failed"
        result.error = "; ".join(result.failed_tables.values()) or None
        self._retry(
            lambda: self.state.finish_run(
                run_id,
                result.status,
                result.rows,
                version=result.version if result.published else None,
                error=result.error,
                tables={
                    name: TableUpdate(o.watermark, o.row_count, o.reconciled, o.full_load)
                    for name, o in outcomes.items()
                },
            ),
            "state: record run",
        )
        self.state.resolve_dead_letters(list(outcomes), cycle=not result.failed_tables)
        self._write_run_log(result, started_at)
        return result

    def _sync_table(
        self,
        spec: TableSpec,
        holder: list[SourceSnapshot],
        full_refresh: bool,
        reconcile: bool,
    ) -> TableOutcome:
        row = self.state.table(spec.name) or {}
        due = reconcile or self._reconcile_due(row.get("last_reconciled_at"))

        def attempt() -> TableOutcome:
            if holder[0].broken:
                holder[0] = self.source.open_snapshot(self.settings.sync_settle_seconds)
            return self.syncer.sync(
                spec,
                holder[0],
                row.get("watermark"),
                full_refresh=full_refresh,
                reconcile=due,
            )

        def reopen(_exc: BaseException) -> None:
            # A dropped connection loses the snapshot: later attempts read a new one.
            holder[0].broken = True
            holder[0].close()
            holder[0] = self.source.open_snapshot(self.settings.sync_settle_seconds)

        outcome: TableOutcome
        outcome, attempts = retry(
            attempt,
            self.policy,
            what=f"table {spec.name}",
            on_retry=lambda exc: _suppress(reopen, exc),
            should_stop=self.stop_requested.is_set,
            sleep=self.stop_requested.wait,
        )
        log.info("table_synced", table=spec.name, attempts=attempts, **outcome.summary())
        return outcome

    def _reconcile_due(self, last: datetime | None) -> bool:
        if last is None:
            return True
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - last).total_seconds()
        return age >= self.settings.reconcile_interval_seconds

    def _publish(self, outcomes: dict[str, TableOutcome]) -> Any:
        self.warehouse.checkpoint()
        snapshot = export_snapshot(
            self.warehouse.con, Path(self.settings.data_dir) / "outgoing" / "snapshot.db"
        )
        return self.publisher.publish(snapshot, self._table_infos(outcomes))

    def _table_infos(self, outcomes: dict[str, TableOutcome]) -> dict[str, TableInfo]:
        """Every synced table in the working DuckDB, failed ones with their old state."""
        infos = {}
        for spec in self.specs:
            if not self.warehouse.has_table(spec.name):
                continue
            if spec.name in outcomes:
                watermark = outcomes[spec.name].watermark
            else:
                watermark = (self.state.table(spec.name) or {}).get("watermark")
            infos[spec.name] = TableInfo(
                row_count=self.warehouse.row_count(spec.name),
                watermark=watermark,
                columns=[
                    ColumnSchema(name=n, type=t) for n, t in self.warehouse.columns(spec.name)
                ],
            )
        return infos

    def _fail_cycle(
        self, result: CycleResult, err: RetryError, started_at: datetime
    ) -> CycleResult:
        result.status, result.error = "failed", str(err)
        log.error("sync_cycle_dead_lettered", run_id=result.run_id, error=str(err))
        assert result.run_id is not None
        self.state.dead_letter(result.run_id, None, str(err), err.attempts)
        self.state.finish_run(result.run_id, "failed", result.rows, error=str(err))
        self._write_run_log(result, started_at)
        return result

    def _write_run_log(self, result: CycleResult, started_at: datetime) -> None:
        self.publisher.write_run_log(
            {
                "run_id": result.run_id,
                "started_at": started_at,
                "finished_at": datetime.now(UTC),
                "status": result.status,
                "published_version": result.version if result.published else None,
                "tables": result.rows,
                "failed_tables": result.failed_tables,
                "error": result.error,
            }
        )


def _suppress(fn: Any, exc: BaseException) -> None:
    try:
        fn(exc)
    except Exception as again:  # the next attempt will fail and be retried
        log.warning("snapshot_reopen_failed", error=_describe(again))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
