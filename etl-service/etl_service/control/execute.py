"""Running one data-changing command: in the worker, or directly from the CLI.

The same code runs either way, so a command's effect and its outcome do not
depend on whether a worker was running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analytics_shared.etl_commands import KINDS
from etl_service.errors import EtlError

if TYPE_CHECKING:
    from etl_service.settings import EtlSettings
    from etl_service.state import StateStore
    from etl_service.sync import CycleResult, SyncEngine

__all__ = ["KINDS", "ROLLBACK_HOLDS", "CommandRunner", "Outcome"]

ROLLBACK_HOLDS = (
    "the rollback holds until the source changes: the worker publishes a new version"
    " only when a table's data changes"
)


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def cycle_report(result: CycleResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "version": result.version,
        "published": result.published,
        "rows": result.rows,
        "failed_tables": result.failed_tables,
        "models_rebuilt": result.models_rebuilt,
        "schema_changes": [c.model_dump(mode="json") for c in result.schema_changes],
        "error": result.error,
    }


def _cycle(result: CycleResult) -> Outcome:
    report = cycle_report(result)
    ok = result.status in ("success", "skipped")
    return Outcome(ok, report, None if ok else (result.error or f"cycle {result.status}"))


class CommandRunner:
    """Runs commands on an engine; builds one (opening the working DuckDB) only
    for the commands that need it, and only when not given one."""

    def __init__(
        self,
        settings: EtlSettings,
        state: StateStore,
        engine: SyncEngine | None = None,
        engine_factory: Callable[[], SyncEngine] | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self._engine = engine
        self._factory = engine_factory
        self._owned: SyncEngine | None = None

    def engine(self) -> SyncEngine:
        if self._engine is None:
            from etl_service.sync import SyncEngine

            factory = self._factory or (lambda: SyncEngine.from_settings(self.settings))
            self._engine = self._owned = factory()
        return self._engine

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = self._engine = None

    def run(self, kind: str, args: dict[str, Any]) -> Outcome:
        handler = getattr(self, "_" + kind.replace("-", "_"), None)
        if kind not in KINDS or handler is None:
            return Outcome(False, error=f"unknown command {kind!r}")
        outcome: Outcome = handler(**args)
        return outcome

    # -- the commands -------------------------------------------------------------

    def _sync(
        self, full_refresh: bool = False, tables: list[str] | None = None, reconcile: bool = False
    ) -> Outcome:
        kind = "full-refresh" if full_refresh else "sync"
        engine = self.engine()
        return _cycle(
            engine.run_cycle(
                full_refresh=full_refresh, tables=tables or None, reconcile=reconcile, kind=kind
            )
        )

    def _backfill(self, table: str) -> Outcome:
        engine = self.engine()
        spec = engine.spec(table)
        engine.state.forget_table(spec.name)
        return _cycle(engine.run_cycle(full_refresh=True, tables=[spec.name], kind="backfill"))

    def _reconcile(self, tables: list[str] | None = None) -> Outcome:
        engine = self.engine()
        return _cycle(engine.run_cycle(tables=tables or None, reconcile=True, kind="reconcile"))

    def _open_dead_letter(self, entry_id: int) -> dict[str, Any]:
        entry = self.state.get_dead_letter(entry_id)
        if entry is None or entry["status"] != "open":
            raise EtlError(f"no open dead letter {entry_id} (see `analytics-etl dlq list`)")
        return entry

    def _dlq_discard(self, id: int) -> Outcome:
        self._open_dead_letter(id)
        self.state.close_dead_letter(id, "discarded")
        return Outcome(True, {"status": "discarded", "dead_letter": id})

    def _dlq_retry(self, id: int) -> Outcome:
        entry = self._open_dead_letter(id)
        tables = [entry["table_name"]] if entry["table_name"] else None
        # A successful run resolves the table's open entries itself.
        return _cycle(self.engine().run_cycle(tables=tables, kind="dlq-retry"))

    def _rollback(self, version: str) -> Outcome:
        workdir = Path(self.settings.data_dir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if self.settings.publish_mode == "lake":
            from etl_service.ops.lake_versions import lake_rollback

            engine = self.engine()  # the working DuckDB is told to resend whole tables
            assert engine.lake is not None
            manifest = lake_rollback(engine.lake, engine.warehouse, version, workdir)
        else:
            from etl_service.ops.versions import rollback
            from etl_service.publisher import Publisher

            publisher = (
                self._engine.publisher
                if self._engine is not None
                else Publisher.from_settings(self.settings)
            )
            manifest = rollback(publisher, version, workdir)
        return Outcome(
            True,
            {
                "status": "current",
                "version": manifest.version,
                "rolled_back_to": version,  # lake mode: as a new snapshot with its data
                "previous_version": manifest.previous_version,
                "created_at": manifest.created_at.isoformat(),
                "note": ROLLBACK_HOLDS,
            },
        )
