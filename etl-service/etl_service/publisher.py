"""Publishing a snapshot: immutable upload, then the manifest as the commit point.

Order matters (see docs/architecture.md): a crash before the manifest write
leaves the previous version current and the new upload orphaned (retention
removes it); readers only ever follow the manifest.
"""

from __future__ import annotations

from datetime import UTC, datetime

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import (
    MANIFEST_KEY,
    Manifest,
    ManifestError,
    TableInfo,
    new_version_id,
)
from analytics_shared.object_store import ObjectNotFound, ObjectStore

from etl_service.snapshot import SnapshotFile

__all__ = ["CONVENIENCE_KEY", "HISTORY_PREFIX", "Publisher"]

HISTORY_PREFIX = "history/"
CONVENIENCE_KEY = "current/analytics.db"

log = get_logger(__name__)


class Publisher:
    def __init__(self, store: ObjectStore, retention: int = 24) -> None:
        self.store = store
        self.retention = retention

    def current(self) -> Manifest | None:
        try:
            raw, _ = self.store.get_bytes(MANIFEST_KEY)
        except ObjectNotFound:
            return None
        return Manifest.from_json(raw)

    def publish(self, snapshot: SnapshotFile, tables: dict[str, TableInfo]) -> Manifest:
        now = datetime.now(UTC)
        version = new_version_id(now)
        key = f"{HISTORY_PREFIX}analytics_{version}.db"
        try:
            previous = self.current()
        except ManifestError:
            log.warning("manifest_unreadable_overwriting")
            previous = None
        self.store.put_file(key, snapshot.path)
        manifest = Manifest(
            version=version,
            created_at=now,
            snapshot_key=key,
            sha256=snapshot.sha256,
            size=snapshot.size,
            previous_version=previous.version if previous else None,
            tables=tables,
        )
        self.store.put_bytes(MANIFEST_KEY, manifest.to_json())  # the commit point
        log.info("snapshot_published", version=version, key=key, size=snapshot.size)
        # The convenience copy is for humans and tools; nothing reads it to decide.
        self.store.put_file(CONVENIENCE_KEY, snapshot.path)
        self.apply_retention(keep_key=key)
        return manifest

    def apply_retention(self, keep_key: str) -> list[str]:
        snapshots = sorted(
            (o for o in self.store.list(HISTORY_PREFIX) if o.key.endswith((".db", ".db.zst"))),
            key=lambda o: o.key,
        )
        doomed = [o.key for o in snapshots[: max(0, len(snapshots) - self.retention)]]
        removed = [k for k in doomed if k != keep_key]
        for key in removed:
            self.store.delete(key)
        if removed:
            log.info("snapshots_pruned", removed=len(removed))
        return removed
