"""Incremental loading of one table: full load, delta merge, key reconciliation.

The rules (docs/architecture.md, ETL section):

- first run, `--full-refresh`, a table without a cursor, a lost working
  database or a changed column set: stream the whole table in batches of
  BATCH_SIZE and swap it in;
- otherwise read `cursor >= watermark - lookback` in the cycle's read
  transaction and merge it by primary key; the new watermark is the source's
  clock at its start minus the settle lag, kept as the source's own text
  (full precision);
- when reconciliation is due, read the primary keys and delete the rows the
  source no longer has (hard deletes).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import SchemaChange
from etl_service.contracts import apply_contract, describe_change, diff_shape
from etl_service.progress import LoadProgress, ProgressSink
from etl_service.source import Source, SourceRead, TableShape
from etl_service.tables import TableSpec, resolve_spec, select_columns
from etl_service.warehouse import Warehouse

__all__ = ["LoadMode", "TableOutcome", "TableSyncer"]

log = get_logger(__name__)


LoadMode = Literal["full", "incremental"]


@dataclass(frozen=True)
class TableOutcome:
    """What syncing one table did; `summary()` is its record in runs and run logs."""

    table: str
    mode: LoadMode
    rows_read: int
    changed: int  # rows inserted, updated or deleted in the working DuckDB
    row_count: int
    watermark: str | None
    reconciled: bool
    full_load: bool
    reason: str = ""
    schema_change: SchemaChange | None = None  # the source's columns changed (contracts)

    def summary(self) -> dict[str, Any]:
        change = self.schema_change
        return {
            "mode": self.mode,
            "read": self.rows_read,
            "changed": self.changed,
            "rows": self.row_count,
            **({"reason": self.reason} if self.reason else {}),
            **({"schema_change": f"{change.action}: {describe_change(change)}"} if change else {}),
        }


_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _later(old: str | None, new: str | None) -> str | None:
    """Watermarks never move back: numbers compare as numbers ("999" < "1000"),
    timestamps as text (the same format, so lexicographic order is time order)."""
    if old is None or new is None:
        return new or old
    if _NUMBER.fullmatch(old) and _NUMBER.fullmatch(new):
        return max(old, new, key=Decimal)
    return max(old, new)


class TableSyncer:
    """Syncs one table at a time into the working DuckDB."""

    def __init__(
        self,
        source: Source,
        warehouse: Warehouse,
        *,
        batch_size: int,
        lookback_seconds: float,
        progress: bool | None = None,
        progress_interval: float = 5.0,
    ) -> None:
        self.source = source
        self.warehouse = warehouse
        self.batch_size = batch_size
        self.lookback_seconds = lookback_seconds
        # A progress bar on a terminal; the log lines come every progress_interval.
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.progress_interval = progress_interval
        # Where progress text goes besides the log (the worker: the command's row).
        self.progress_sink: ProgressSink | None = None
        # Reflection is cached until the column signature (one cheap query) changes.
        self._shapes: dict[str, TableShape] = {}
        self._signatures: dict[str, tuple[tuple[object, ...], ...]] = {}

    def shape(self, table: str, *, refresh: bool = False) -> TableShape:
        if refresh or table not in self._shapes:
            self._shapes[table] = self.source.shape(table)
        return self._shapes[table]

    def current_shape(self, table: str) -> TableShape:
        """The source table's shape now: reflected again when its columns changed."""
        signature = self.source.column_signature(table)
        stale = self._signatures.get(table) != signature
        self._signatures[table] = signature
        return self.shape(table, refresh=stale)

    def _contract(
        self, spec: TableSpec, shape: TableShape
    ) -> tuple[TableShape, SchemaChange | None, bool]:
        """(shape to read, the change if any, reload?) under the table's schema contract;
        raises SchemaContractError when the contract refuses the change."""
        held = self.warehouse.columns(spec.name)
        if not held:
            return shape, None, False
        change = diff_shape(
            spec.name,
            spec.schema_contract,
            held,
            [(c.name, c.duckdb_type) for c in shape.columns],
            self.warehouse.canonical_type,
        )
        if change is None:
            return shape, None, False
        decision = apply_contract(change, shape, [n for n, _ in held])
        log.warning(
            "schema_change",
            table=spec.name,
            contract=spec.schema_contract,
            action=decision.change.action,
            change=describe_change(change),
        )
        return decision.shape, decision.change, decision.reload

    def _watermark(self, spec: TableSpec, shape: TableShape, cycle_read: SourceRead) -> str | None:
        if spec.cursor_column is None:
            return None
        cursor = shape.column(spec.cursor_column)
        if cursor.is_timestamp:
            return cycle_read.now_aware if cursor.has_timezone else cycle_read.now_naive
        if cursor.is_rowversion and cycle_read.active_rowversion is not None:
            # Every rowversion below MIN_ACTIVE_ROWVERSION() (read before the
            # table) is committed; one above may belong to an open transaction.
            return cycle_read.active_rowversion
        return self.warehouse.max_value(spec.name, spec.cursor_column)

    def sync(
        self,
        spec: TableSpec,
        cycle_read: SourceRead,
        watermark: str | None,
        *,
        full_refresh: bool = False,
        reconcile: bool = False,
    ) -> TableOutcome:
        source_shape = self.current_shape(spec.name)
        shape = select_columns(spec, source_shape)
        held = {n for n, _ in self.warehouse.columns(spec.name)}
        if held & (set(source_shape.names) - set(shape.names)):
            # A column now excluded is still in the working table: reload without
            # it, whatever the schema contract (it must leave the next snapshot).
            resolved = resolve_spec(spec, shape.names, shape.primary_key)
            return self._full_load(resolved, shape, cycle_read, "column list changed")
        shape, change, reload = self._contract(spec, shape)
        resolved = resolve_spec(spec, shape.names, shape.primary_key)
        reason = ""
        if full_refresh:
            reason = "requested"
        elif not resolved.incremental:
            reason = "no cursor column"
        elif watermark is None:
            reason = "first run"
        elif not self.warehouse.has_table(spec.name):
            reason = "working table missing"
        elif reload:
            # evolve: reload, so existing rows get a new column's values too.
            reason = "columns changed"
        if reason:
            return self._full_load(resolved, shape, cycle_read, reason, change)
        assert resolved.cursor_column is not None and watermark is not None
        cursor = shape.column(resolved.cursor_column)
        lower = self.source.lower_bound_sql(
            watermark, cursor, self.lookback_seconds, resolved.cursor_lookback
        )
        sql = self.source.select_sql(
            spec.name, shape.columns, f"{self.source.quote(cursor.name)} >= {lower}"
        )
        reader = self.source.read(sql, self.batch_size, cycle_read)
        columns = [(c.name, c.duckdb_type) for c in shape.columns]
        merged = self.warehouse.merge(
            spec.name,
            reader,
            columns,
            primary_key=resolved.primary_key or (),
            cursor=resolved.cursor_column,
            soft_delete=resolved.soft_delete_column,
        )
        removed = self._reconcile(resolved, cycle_read) if reconcile else 0
        return TableOutcome(
            table=spec.name,
            mode="incremental",
            rows_read=merged.read,
            changed=merged.changed + removed,
            row_count=self.warehouse.row_count(spec.name),
            watermark=_later(watermark, self._watermark(resolved, shape, cycle_read)),
            reconciled=reconcile,
            full_load=False,
            schema_change=change,
        )

    def _full_load(
        self,
        spec: TableSpec,
        shape: TableShape,
        cycle_read: SourceRead,
        reason: str,
        change: SchemaChange | None = None,
    ) -> TableOutcome:
        started = time.monotonic()
        existed = self.warehouse.has_table(spec.name)
        reader = self.source.read(
            self.source.select_sql(spec.name, shape.columns), self.batch_size, cycle_read
        )
        reader = LoadProgress(
            spec.name,
            self.source.estimate_rows(spec.name),
            interval=self.progress_interval,
            bar=self.progress,
            sink=self.progress_sink,
        ).wrap(reader)
        rows, changed = self.warehouse.replace_table(
            spec.name,
            reader,
            [(c.name, c.duckdb_type) for c in shape.columns],
            detect_changes=existed and not spec.incremental,
            soft_delete=spec.soft_delete_column,
            primary_key=spec.primary_key,
        )
        log.info(
            "table_full_load",
            table=spec.name,
            rows=rows,
            reason=reason,
            duration_s=round(time.monotonic() - started, 3),
        )
        return TableOutcome(
            table=spec.name,
            mode="full",
            rows_read=rows,
            changed=rows if changed else 0,
            row_count=rows,
            watermark=self._watermark(spec, shape, cycle_read),
            reconciled=True,
            full_load=True,
            reason=reason,
            schema_change=change,
        )

    def _reconcile(self, spec: TableSpec, cycle_read: SourceRead) -> int:
        shape = self.shape(spec.name)
        pk = [shape.column(c) for c in spec.primary_key or ()]
        keys = self.source.read(self.source.select_sql(spec.name, pk), self.batch_size, cycle_read)
        removed = self.warehouse.reconcile(spec.name, keys, [(c.name, c.duckdb_type) for c in pk])
        log.info("table_reconciled", table=spec.name, deleted=removed)
        return removed
