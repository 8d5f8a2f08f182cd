"""`current/status.json`: the ETL's status as data, next to the manifest.

Written after every cycle (after the manifest's commit, and after a failed or
abandoned cycle too) and after every command the worker runs, so a reader of
the store (the API's `GET /status`) sees failures without the state database.
It holds what `analytics-etl status --json` prints, minus the state database's
address, plus the last cycle.

What must always hold: writing it never fails a cycle (it is logged and
skipped), and a state database that cannot be read still leaves a file that
says so, with the tables of the last good file.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import STATUS_KEY
from analytics_shared.object_store import ObjectNotFound, ObjectStore, StoreError
from etl_service.errors import describe

if TYPE_CHECKING:
    from etl_service.state import StateStore
    from etl_service.sync import CycleResult

__all__ = ["FORMAT_VERSION", "StatusFile"]

FORMAT_VERSION = 1

log = get_logger(__name__)


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def cycle_summary(result: CycleResult, kind: str) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "kind": kind,
        "status": result.status,
        "version": result.version,
        "published": result.published,
        "failed_tables": result.failed_tables,
        "error": result.error,
        "duration_seconds": round(result.duration_seconds, 3),
        "finished_at": datetime.now(UTC),
    }


class StatusFile:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.last_cycle: dict[str, Any] | None = None

    def write(
        self, state: StateStore, result: CycleResult | None = None, kind: str = "sync"
    ) -> None:
        """Build the document from the state database and store it; never raises."""
        from etl_service.ops.status_view import status_document

        if result is not None:
            self.last_cycle = cycle_summary(result, kind)
        try:
            doc = status_document(state)
            doc.pop("state")  # the state database's address stays private
        except Exception as exc:  # the state database is down: say so, keep the tables
            doc = self._previous()
            doc["state_error"] = f"the state database could not be read: {describe(exc)}"
        body = {
            "format_version": FORMAT_VERSION,
            "generated_at": datetime.now(UTC),
            "last_cycle": self.last_cycle,
            **doc,
        }
        try:
            data = json.dumps(body, default=_json_default).encode()
            self.store.put_bytes(STATUS_KEY, data)
        except (StoreError, OSError, TypeError, ValueError) as exc:
            log.warning("status_file_not_written", error=describe(exc))

    def _previous(self) -> dict[str, Any]:
        try:
            raw, _ = self.store.get_bytes(STATUS_KEY)
            previous: dict[str, Any] = json.loads(raw)
        except (ObjectNotFound, StoreError, OSError, ValueError):
            return {}
        for key in ("format_version", "generated_at", "last_cycle", "state_error"):
            previous.pop(key, None)
        return previous
