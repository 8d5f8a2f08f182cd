"""One sync cycle: source -> working DuckDB -> snapshot -> store -> state.

Walking-skeleton version: every configured table is reloaded in full. The
incremental engine (watermarks, merge, deletes) replaces `_load_table`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import ColumnSchema, TableInfo

from etl_service.publisher import Publisher
from etl_service.settings import EtlSettings
from etl_service.snapshot import export_snapshot
from etl_service.source import Source
from etl_service.state import StateStore
from etl_service.tables import TableSpec, table_specs
from etl_service.warehouse import Warehouse

__all__ = ["CycleResult", "SyncEngine"]

log = get_logger(__name__)


@dataclass
class CycleResult:
    run_id: int
    status: str
    rows: dict[str, int] = field(default_factory=dict)
    version: str | None = None
    error: str | None = None
    duration_seconds: float = 0.0


class SyncEngine:
    """Owns the long-lived pieces of the ETL; `run_cycle` is one scheduled tick."""

    def __init__(self, settings: EtlSettings) -> None:
        self.settings = settings
        self.specs = table_specs(settings.tables_to_sync)
        self.source = Source(settings.resolved_source_url)
        self.state = StateStore(settings.resolved_database_url)
        self.warehouse = Warehouse(settings.working_db_path)
        self.publisher = Publisher(settings.open_store(), retention=settings.snapshot_retention)

    def close(self) -> None:
        self.warehouse.close()
        self.source.close()
        self.state.close()

    def _load_table(self, spec: TableSpec) -> int:
        columns = self.source.columns(spec.name)
        reader = self.source.read_table(
            spec.name, [n for n, _ in columns], self.settings.batch_size
        )
        return self.warehouse.replace_table(spec.name, reader, columns)

    def _table_info(self, spec: TableSpec, rows: int) -> TableInfo:
        watermark = (
            self.warehouse.max_value(spec.name, spec.cursor_column) if spec.cursor_column else None
        )
        columns = [ColumnSchema(name=n, type=t) for n, t in self.warehouse.columns(spec.name)]
        return TableInfo(row_count=rows, watermark=watermark, columns=columns)

    def run_cycle(self) -> CycleResult:
        started = time.monotonic()
        run_id = self.state.start_run()
        result = CycleResult(run_id=run_id, status="running")
        try:
            tables: dict[str, TableInfo] = {}
            for spec in self.specs:
                rows = self._load_table(spec)
                result.rows[spec.name] = rows
                tables[spec.name] = self._table_info(spec, rows)
                log.info("table_synced", table=spec.name, rows=rows)
            self.warehouse.checkpoint()
            snapshot = export_snapshot(
                self.warehouse.con, Path(self.settings.data_dir) / "outgoing" / "snapshot.db"
            )
            manifest = self.publisher.publish(snapshot, tables)
            result.version = manifest.version
            result.status = "success"
            self.state.finish_run(
                run_id,
                "success",
                result.rows,
                version=manifest.version,
                watermarks={n: (t.watermark, t.row_count) for n, t in tables.items()},
            )
        except Exception as exc:
            result.status = "failed"
            result.error = f"{type(exc).__name__}: {exc}"
            log.exception("sync_cycle_failed", run_id=run_id)
            self.state.finish_run(run_id, "failed", result.rows, error=result.error)
        result.duration_seconds = time.monotonic() - started
        log.info(
            "sync_cycle_finished",
            run_id=run_id,
            status=result.status,
            version=result.version,
            duration_s=round(result.duration_seconds, 3),
        )
        return result
