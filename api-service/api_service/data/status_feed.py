"""The ETL's `current/status.json`, read from the store for `GET /status`.

Read like the manifest: a conditional GET (If-None-Match) at most once per
`min_interval` seconds per worker, so an unchanged file costs a 304 and a
burst of requests costs one round trip. What must always hold: reading never
raises; an unreachable store or a missing or unreadable file leaves the last
document read (if any) and an error saying why.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import STATUS_KEY
from analytics_shared.object_store import NotModified, ObjectNotFound, ObjectStore, StoreError

__all__ = ["EtlStatus", "EtlStatusFeed"]

log = get_logger(__name__)


@dataclass(frozen=True)
class EtlStatus:
    document: dict[str, Any] | None  # the last status.json read, None before any
    error: str | None  # why the latest read failed (None: it is current)


class EtlStatusFeed:
    def __init__(self, store: ObjectStore, *, min_interval: float = 1.0) -> None:
        self.store = store
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._etag: str | None = None
        self._document: dict[str, Any] | None = None
        self._error: str | None = None
        self._read_at: float | None = None

    def read(self) -> EtlStatus:
        """The status document, refreshed when the last read is older than min_interval."""
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.min_interval:
                self._read_at = now
                self._refresh()
            return EtlStatus(self._document, self._error)

    def _refresh(self) -> None:
        try:
            raw, etag = self.store.get_bytes(STATUS_KEY, if_none_match=self._etag)
        except NotModified:
            self._error = None
            return
        except ObjectNotFound:
            self._error = "the ETL has not written current/status.json yet"
            return
        except StoreError as exc:
            self._error = f"the store is unreachable: {exc}"
            log.warning("etl_status_unreadable", error=self._error)
            return
        try:
            document = json.loads(raw)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._error = f"current/status.json is not readable: {exc}"
            log.warning("etl_status_unreadable", error=self._error)
            return
        self._document, self._etag, self._error = document, etag, None
