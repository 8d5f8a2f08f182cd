"""One sync cycle: source -> working DuckDB -> snapshot -> store -> state.

A cycle holds the sync lock (one replica at a time), begins one read
transaction on the source (etl_service.source), syncs each table
(etl_service.incremental) with retries on transient errors, publishes when
something changed, and records the run and the new watermarks last. A table
that still fails after its retries goes to the dead-letter queue; the other
tables carry on and the next cycle runs as usual.

Crash safety: watermarks are committed after the publish, so a crash anywhere
before re-reads the same delta and the merge makes that harmless. A marker
file next to the working DuckDB remembers merged-but-unpublished changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import ColumnSchema, Manifest, SchemaChange, TableInfo
from etl_service.errors import (
    ModelBuildError,
    RetryError,
    SchemaContractError,
    describe,
    with_remedy,
)
from etl_service.export import export_snapshot
from etl_service.incremental import TableOutcome, TableSyncer
from etl_service.lake_publisher import LakePublisher
from etl_service.lock import SyncLock
from etl_service.models import ModelBuilder, ModelDefinition, configured_models
from etl_service.ops.memory_budget import EtlBudget, duckdb_config, etl_budget
from etl_service.ops.status_file import StatusFile
from etl_service.publisher import Publisher
from etl_service.retry import RetryPolicy, retry
from etl_service.run_logs import RunLogStore
from etl_service.settings import EtlSettings
from etl_service.source import MssqlTls, Source, SourceRead
from etl_service.state import StateStore, TableUpdate
from etl_service.tables import TableSpec, table_specs
from etl_service.warehouse import Warehouse

__all__ = ["CycleResult", "CycleStatus", "SyncEngine"]

log = get_logger(__name__)
T = TypeVar("T")

# running (until recorded) | success | partial (some tables failed) | failed |
# skipped (the lock is held elsewhere) | abandoned (shutdown mid-cycle)
CycleStatus = Literal["running", "success", "partial", "failed", "skipped", "abandoned"]


@dataclass
class CycleResult:
    run_id: int | None
    status: CycleStatus
    outcomes: dict[str, TableOutcome] = field(default_factory=dict)
    version: str | None = None
    published: bool = False
    error: str | None = None
    failed_tables: dict[str, str] = field(default_factory=dict)
    duration_seconds: float = 0.0
    models_rebuilt: list[str] = field(default_factory=list)
    # Source schema changes first seen in this cycle (alerts go out for these).
    schema_changes: list[SchemaChange] = field(default_factory=list)

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        """Each synced table's summary, as the CLI, the run history and run logs show it."""
        return {name: outcome.summary() for name, outcome in self.outcomes.items()}


class _CycleRead:
    """The cycle's read transaction; a dropped connection renews it for the next attempt."""

    def __init__(self, source: Source, settle_seconds: float, first: SourceRead) -> None:
        self.source = source
        self.settle_seconds = settle_seconds
        self.current = first

    def get(self) -> SourceRead:
        if self.current.broken:
            self.current = self.source.begin_read(self.settle_seconds)
        return self.current

    def renew(self, _exc: BaseException) -> None:
        # A dropped connection loses the read transaction: later attempts begin a new one.
        self.current.broken = True
        self.current.close()
        self.current = self.source.begin_read(self.settle_seconds)

    def close(self) -> None:
        self.current.close()


class SyncEngine:
    """Owns the long-lived pieces of the ETL; `run_cycle` is one scheduled tick.

    `from_settings` builds the collaborators; tests may pass their own.
    """

    def __init__(
        self,
        settings: EtlSettings,
        *,
        source: Source,
        state: StateStore,
        warehouse: Warehouse,
        publisher: Publisher,
        run_logs: RunLogStore,
        specs: list[TableSpec] | None = None,
        lock: SyncLock | None = None,
        progress: bool | None = None,
        models: list[ModelDefinition] | None = None,
        lake: LakePublisher | None = None,
    ) -> None:
        self.settings = settings
        self.specs = (
            specs
            if specs is not None
            else table_specs(settings.tables_to_sync, settings.table_config)
        )
        table_names = [s.name for s in self.specs]
        if models is None:
            models = configured_models(settings.models_dir, table_names)
        self.models = ModelBuilder(models, table_names)
        self.source = source
        self.state = state
        self.warehouse = warehouse
        self.publisher = publisher
        # Lake mode: cycles publish through the lake; `publisher` still owns the manifest.
        self.lake = lake
        self.run_logs = run_logs
        self.status_file = StatusFile(publisher.store)  # current/status.json
        self.lock = lock or SyncLock(state.engine, Path(settings.data_dir) / "etl_sync.lock")
        self.policy = RetryPolicy(
            settings.retry_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )
        self.syncer = TableSyncer(
            source,
            warehouse,
            batch_size=settings.batch_size,
            lookback_seconds=settings.sync_lookback_seconds,
            progress=progress,
            progress_interval=settings.progress_log_seconds,
        )
        # What from_settings derived from the container (ops/memory_budget.py).
        self.memory_budget: EtlBudget | None = None
        # Set by the scheduler on SIGTERM/SIGINT: the cycle stops between tables.
        self.stop_requested = threading.Event()

    @classmethod
    def from_settings(
        cls,
        settings: EtlSettings,
        *,
        progress: bool | None = None,
        memory_share: int | None = None,
    ) -> SyncEngine:
        """`memory_share`: the bytes of an ETL embedded in the API (all-in-one)."""
        specs = table_specs(settings.tables_to_sync, settings.table_config)  # fails first
        models = configured_models(settings.models_dir, [s.name for s in specs])
        source = Source(
            settings.resolved_source_url,
            timezone=settings.source_timezone,
            tls=MssqlTls(settings.mssql_trust_server_certificate, settings.mssql_ca_file),
        )
        budget = etl_budget(settings, memory_share)
        log.info("etl_memory_budget", **budget.as_dict())
        state = StateStore(settings.resolved_database_url)
        lake_mode = settings.publish_mode == "lake"
        warehouse = Warehouse(
            settings.working_db_path, duckdb_config(budget, settings), track_changes=lake_mode
        )
        store = settings.open_store()
        publisher = Publisher.from_settings(settings, store)
        engine = cls(
            settings,
            source=source,
            state=state,
            warehouse=warehouse,
            publisher=publisher,
            run_logs=RunLogStore.from_settings(settings, store),
            specs=specs,
            progress=progress,
            models=models,
            lake=LakePublisher.from_settings(settings, publisher) if lake_mode else None,
        )
        engine.memory_budget = budget
        return engine

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
            result = CycleResult(
                run_id=None, status="failed", error=with_remedy(describe(exc), exc)
            )
        result.duration_seconds = time.monotonic() - started
        if result.status != "skipped":  # after the commit point, and after failures
            self.status_file.write(self.state, result, kind)
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

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        value, _ = retry(
            fn,
            self.policy,
            what=what,
            should_stop=self.stop_requested.is_set,
            sleep=self.stop_requested.wait,
        )
        return value

    def _locked_cycle(
        self, specs: list[TableSpec], full_refresh: bool, reconcile: bool, kind: str
    ) -> CycleResult:
        started_at = datetime.now(UTC)
        interrupted = self._retry(self.state.abandon_interrupted_runs, "state: close runs")
        if interrupted:
            log.warning("interrupted_runs_abandoned", run_ids=interrupted)
        run_id = self._retry(lambda: self.state.start_run(kind), "state: start run")
        result = CycleResult(run_id=run_id, status="running")
        try:
            cycle_read = self._begin_read()
        except RetryError as err:
            return self._fail_cycle(result, err, started_at)
        marker = self.warehouse.unpublished_marker
        unpublished_before = marker.exists()
        marker.touch()
        self._sync_tables(result, specs, cycle_read, full_refresh, reconcile)
        if result.status == "abandoned":
            return self._abandon(result)
        try:
            models_changed = self._build_models(result, force=unpublished_before)
            self._publish_if_changed(result, unpublished_before or models_changed)
        except (RetryError, ModelBuildError) as err:
            return self._fail_cycle(result, err, started_at)
        marker.unlink(missing_ok=True)
        self._record_run(result, started_at)
        return result

    # -- the cycle's steps ---------------------------------------------------------

    def _begin_read(self) -> _CycleRead:
        self._retry(self.warehouse.ensure_usable, "warehouse: open")
        settle = self.settings.sync_settle_seconds
        first = self._retry(lambda: self.source.begin_read(settle), "source: open snapshot")
        return _CycleRead(self.source, settle, first)

    def _sync_tables(
        self,
        result: CycleResult,
        specs: list[TableSpec],
        cycle_read: _CycleRead,
        full_refresh: bool,
        reconcile: bool,
    ) -> None:
        """Each table in turn; one that fails after its retries is dead-lettered."""
        assert result.run_id is not None
        try:
            for spec in specs:
                if self.stop_requested.is_set():
                    result.status = "abandoned"
                    break
                try:
                    result.outcomes[spec.name] = self._sync_table(
                        spec, cycle_read, full_refresh, reconcile
                    )
                except RetryError as err:
                    result.failed_tables[spec.name] = str(err)
                    self.state.dead_letter(result.run_id, spec.name, str(err), err.attempts)
                    log.error("table_dead_lettered", table=spec.name, error=str(err))
                    if isinstance(err.__cause__, SchemaContractError):
                        self._record_schema_change(result, err.__cause__.change)  # type: ignore[arg-type]
                else:
                    change = result.outcomes[spec.name].schema_change
                    if change is not None:
                        self._record_schema_change(result, change)
        finally:
            cycle_read.close()

    def _record_schema_change(self, result: CycleResult, change: SchemaChange) -> None:
        """Into the state store (once per distinct change), the cycle's result,
        and so the run log, the manifest and the alert webhook."""
        details = change.model_dump(mode="json", include={"added", "removed", "retyped"})
        new = self._retry(
            lambda: self.state.record_schema_change(
                result.run_id, change.table, change.contract, change.action, details
            ),
            "state: record schema change",
        )
        if new:
            result.schema_changes.append(change)

    def _sync_table(
        self, spec: TableSpec, cycle_read: _CycleRead, full_refresh: bool, reconcile: bool
    ) -> TableOutcome:
        state = self.state.table(spec.name)
        watermark = state.watermark if state else None
        due = reconcile or self._reconcile_due(state.last_reconciled_at if state else None)

        def attempt() -> TableOutcome:
            return self.syncer.sync(
                spec, cycle_read.get(), watermark, full_refresh=full_refresh, reconcile=due
            )

        outcome, attempts = retry(
            attempt,
            self.policy,
            what=f"table {spec.name}",
            on_retry=lambda exc: _suppress(cycle_read.renew, exc),
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

    def _abandon(self, result: CycleResult) -> CycleResult:
        # Merged tables stay merged (the marker makes the next cycle publish);
        # watermarks stay put, so the next cycle re-reads the same deltas.
        assert result.run_id is not None
        self.state.finish_run(result.run_id, "abandoned", result.rows, error="shutdown")
        log.warning("sync_cycle_abandoned", run_id=result.run_id, done=sorted(result.outcomes))
        return result

    def _build_models(self, result: CycleResult, *, force: bool) -> bool:
        """Models over the merged tables, before anything is exported; True when
        the model files themselves changed (so the snapshot must be published)."""
        changed = [name for name, o in result.outcomes.items() if o.changed]
        present = [s.name for s in self.specs if self.warehouse.has_table(s.name)]
        build = self.models.build(self.warehouse.con, changed, present_tables=present, force=force)
        result.models_rebuilt = build.rebuilt
        return build.changed

    def _publish_if_changed(self, result: CycleResult, unpublished_before: bool) -> None:
        """Publish when a table changed, an earlier cycle left changes unpublished,
        or nothing was ever published; otherwise report the current version."""
        outcomes = result.outcomes
        changed = any(o.changed for o in outcomes.values())
        if outcomes and (changed or unpublished_before or self.publisher.current() is None):
            manifest = self._retry(lambda: self._publish(outcomes), "store: publish snapshot")
            # An export equal to the current version is not uploaded (Publisher).
            result.version = manifest.version
            result.published = not self.publisher.last_publish_skipped
        else:
            current = self.publisher.current()
            result.version = current.version if current else None

    def _publish(self, outcomes: dict[str, TableOutcome]) -> Manifest:
        if self.lake is not None:
            models = self.models.infos(self.warehouse.con)
            return self.lake.publish(
                self.warehouse,
                self._primary_keys(),
                self._table_infos(outcomes),
                schema_changes=self._schema_changes_since_current(),
                models=models,
                definitions=self.models.lake_models(models),
            )
        self.warehouse.checkpoint()
        snapshot = export_snapshot(
            self.warehouse.con, Path(self.settings.data_dir) / "outgoing" / "snapshot.db"
        )
        return self.publisher.publish(
            snapshot,
            self._table_infos(outcomes),
            models=self.models.infos(self.warehouse.con),
            schema_changes=self._schema_changes_since_current(),
        )

    def _primary_keys(self) -> dict[str, list[str]]:
        """Each working table's primary key (configured, else the source's)."""
        keys = {}
        for spec in self.specs:
            if self.warehouse.has_table(spec.name):
                pk = spec.primary_key or self.syncer.shape(spec.name).primary_key
                keys[spec.name] = list(pk)
        return keys

    def _schema_changes_since_current(self) -> list[SchemaChange]:
        """Schema changes recorded after the current version was published."""
        current = self.publisher.current()
        rows = self.state.schema_changes(100, since=current.created_at if current else None)
        return [
            SchemaChange(
                table=r["table_name"],
                detected_at=r["detected_at"],
                contract=r["contract"],
                action=r["action"],
                **r["change"],
            )
            for r in reversed(rows)
        ]

    def _table_infos(self, outcomes: dict[str, TableOutcome]) -> dict[str, TableInfo]:
        """Every synced table in the working DuckDB, failed ones with their old state."""
        infos = {}
        for spec in self.specs:
            if not self.warehouse.has_table(spec.name):
                continue
            if spec.name in outcomes:
                watermark = outcomes[spec.name].watermark
            else:
                state = self.state.table(spec.name)
                watermark = state.watermark if state else None
            infos[spec.name] = TableInfo(
                row_count=self.warehouse.row_count(spec.name),
                watermark=watermark,
                columns=[
                    ColumnSchema(name=n, type=t) for n, t in self.warehouse.columns(spec.name)
                ],
            )
        return infos

    def _record_run(self, result: CycleResult, started_at: datetime) -> None:
        """The run, its tables' new watermarks (the last step), and the run log."""
        assert result.run_id is not None
        run_id = result.run_id
        status = result.status = _final_status(result)
        result.error = "; ".join(result.failed_tables.values()) or None
        self._retry(
            lambda: self.state.finish_run(
                run_id,
                status,
                result.rows,
                version=result.version if result.published else None,
                error=result.error,
                tables={
                    name: TableUpdate(o.watermark, o.row_count, o.reconciled, o.full_load)
                    for name, o in result.outcomes.items()
                },
            ),
            "state: record run",
        )
        self.state.resolve_dead_letters(list(result.outcomes), cycle=not result.failed_tables)
        self._write_run_log(result, started_at)

    def _fail_cycle(
        self, result: CycleResult, err: RetryError | ModelBuildError, started_at: datetime
    ) -> CycleResult:
        # The operator's next step (the settings to check) goes with the error.
        result.status, result.error = "failed", with_remedy(str(err), err)
        log.error("sync_cycle_dead_lettered", run_id=result.run_id, error=result.error)
        assert result.run_id is not None
        attempts = err.attempts if isinstance(err, RetryError) else 1
        self.state.dead_letter(result.run_id, None, result.error, attempts)
        self.state.finish_run(result.run_id, "failed", result.rows, error=result.error)
        self._write_run_log(result, started_at)
        return result

    def _write_run_log(self, result: CycleResult, started_at: datetime) -> None:
        self.run_logs.write(
            {
                "run_id": result.run_id,
                "started_at": started_at,
                "finished_at": datetime.now(UTC),
                "status": result.status,
                "published_version": result.version if result.published else None,
                "tables": result.rows,
                "failed_tables": result.failed_tables,
                "models_rebuilt": result.models_rebuilt,
                "schema_changes": [c.model_dump(mode="json") for c in result.schema_changes],
                "error": result.error,
            }
        )


def _final_status(result: CycleResult) -> Literal["success", "partial", "failed"]:
    if not result.failed_tables:
        return "success"
    return "partial" if result.outcomes else "failed"


def _suppress(fn: Callable[[BaseException], None], exc: BaseException) -> None:
    try:
        fn(exc)
    except Exception as again:  # the next attempt will fail and be retried
        log.warning("snapshot_reopen_failed", error=describe(again))
