"""Per-run JSON logs in the object store: `logs/etl_sync_<date>/run_<time>_<id>.json`.

One record per cycle, for humans and log tools; nothing reads them to decide.
Writing never raises (a run log must not fail a cycle), and day folders
older than the retention are pruned once per UTC day per process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analytics_shared.logging_config import get_logger
from analytics_shared.object_store import ObjectStore, StoreError

if TYPE_CHECKING:
    from etl_service.settings import EtlSettings

__all__ = ["LOGS_PREFIX", "RunLogStore"]

LOGS_PREFIX = "logs/"
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")

log = get_logger(__name__)


class RunLogStore:
    def __init__(self, store: ObjectStore, retention_days: int = 30) -> None:
        self.store = store
        self.retention_days = retention_days  # 0: keep run logs forever
        self._pruned_on: date | None = None

    @classmethod
    def from_settings(cls, settings: EtlSettings, store: ObjectStore | None = None) -> RunLogStore:
        return cls(store or settings.open_store(), settings.run_log_retention_days)

    def write(self, record: Mapping[str, Any]) -> str | None:
        """Store one run's JSON record under `logs/etl_sync_<date>/`; never raises.

        `record` should carry `run_id` and `started_at`/`finished_at`; any
        JSON-able values (datetimes become ISO strings).
        """
        now = datetime.now(UTC)
        run_id = record.get("run_id", "x")
        key = (
            f"{LOGS_PREFIX}etl_sync_{now:%Y-%m-%d}/"
            f"run_{now:%Y%m%dT%H%M%S%fZ}_{_safe(str(run_id))}.json"
        )
        try:
            body = json.dumps(dict(record), default=_json_default, indent=2, sort_keys=True)
            self.store.put_bytes(key, body.encode())
        except (StoreError, OSError, TypeError, ValueError) as exc:
            log.warning("run_log_not_stored", key=key, error=str(exc))
            return None
        if self._pruned_on != now.date():
            self.prune(now.date())
        return key

    def prune(self, today: date) -> list[str]:
        """Delete run logs in day folders older than `retention_days`; never raises.

        Runs once per UTC day per process (one LIST of `logs/`). An S3 bucket
        made by our Terraform expires them by a lifecycle rule as well; a local
        folder store has only this."""
        self._pruned_on = today
        if self.retention_days <= 0:
            return []
        cutoff = (today - timedelta(days=self.retention_days)).isoformat()
        removed: list[str] = []
        try:
            for obj in self.store.list(f"{LOGS_PREFIX}etl_sync_"):
                day = obj.key[len(LOGS_PREFIX) + len("etl_sync_") :][:10]
                if _DAY.fullmatch(day) and day < cutoff:
                    self.store.delete(obj.key)
                    removed.append(obj.key)
        except (StoreError, OSError) as exc:
            log.warning("run_logs_not_pruned", error=str(exc))
        if removed:
            log.info("run_logs_pruned", removed=len(removed), older_than=cutoff)
        return removed


def _safe(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]", "_", text)[:64] or "x"


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)
