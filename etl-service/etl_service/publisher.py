"""Publishing a snapshot: immutable upload, then the manifest as the commit point.

Order matters (see docs/architecture.md, "Snapshot lifecycle"):

1. upload the snapshot under an immutable key `history/analytics_<version>.db[.zst]`
   and its manifest beside it (`history/analytics_<version>.json`, for rollback);
2. write `current/manifest.json` with a conditional PUT (If-Match the ETag read
   before the upload, or If-None-Match `*` for the first version): the commit
   point. A crash before it leaves the previous version current and the upload
   orphaned (retention removes it); a second writer loses with `ManifestConflict`;
3. best effort afterwards: the `current/analytics.db` convenience copy and retention.

Readers only ever follow the manifest. Run logs are not published here
(etl_service.run_logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import (
    MANIFEST_KEY,
    Manifest,
    ManifestError,
    ModelInfo,
    SchemaChange,
    TableInfo,
    new_version_id,
)
from analytics_shared.object_store import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StoreError,
)
from analytics_shared.snapshot_file import COMPRESSIONS, fetch_verified
from etl_service.export import SnapshotFile, compress_snapshot

if TYPE_CHECKING:
    from etl_service.settings import EtlSettings

__all__ = [
    "CONVENIENCE_KEY",
    "HISTORY_PREFIX",
    "ManifestConflict",
    "PublishedVersion",
    "Publisher",
    "manifest_key_for",
    "snapshot_key_for",
]

HISTORY_PREFIX = "history/"
CONVENIENCE_KEY = "current/analytics.db"

_HISTORY_KEY = re.compile(
    r"^history/analytics_(?P<version>[0-9A-Za-z_.-]+?)\.(?P<ext>db|db\.zst|json)$"
)

log = get_logger(__name__)


class ManifestConflict(StoreError):
    """Someone else changed `current/manifest.json` while this writer was publishing."""


def snapshot_key_for(version: str, compression: str | None) -> str:
    return f"{HISTORY_PREFIX}analytics_{version}.db" + (".zst" if compression == "zstd" else "")


def manifest_key_for(version: str) -> str:
    return f"{HISTORY_PREFIX}analytics_{version}.json"


@dataclass(frozen=True)
class PublishedVersion:
    """One version in `history/`: its manifest (None if unreadable) and objects."""

    version: str
    manifest: Manifest | None
    snapshot: ObjectInfo | None
    sidecar: ObjectInfo | None
    current: bool

    @property
    def newest_change(self) -> datetime:
        stamps = [o.last_modified for o in (self.snapshot, self.sidecar) if o is not None]
        return max(stamps)


class Publisher:
    def __init__(
        self,
        store: ObjectStore,
        retention: int = 24,
        *,
        grace_seconds: float = 900.0,
        compression: str = "zstd",
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown snapshot compression {compression!r}")
        self.store = store
        self.retention = max(1, retention)
        self.grace_seconds = grace_seconds
        self.compression = compression
        # True when the last publish() found nothing changed and wrote nothing.
        self.last_publish_skipped = False

    @classmethod
    def from_settings(cls, settings: EtlSettings, store: ObjectStore | None = None) -> Publisher:
        return cls(
            store or settings.open_store(),
            retention=settings.snapshot_retention,
            grace_seconds=settings.snapshot_retention_grace_seconds,
            compression=settings.snapshot_compression,
        )

    # -- reading -----------------------------------------------------------
    def read_current(self) -> tuple[Manifest | None, str | None]:
        """(manifest, etag); (None, None) before the first publish.

        An unreadable manifest gives (None, etag) so a writer can still replace
        exactly that object conditionally.
        """
        try:
            raw, etag = self.store.get_bytes(MANIFEST_KEY)
        except ObjectNotFound:
            return None, None
        try:
            return Manifest.from_json(raw), etag
        except ManifestError as exc:
            log.warning("manifest_unreadable", error=str(exc))
            return None, etag

    def current(self) -> Manifest | None:
        try:
            raw, _ = self.store.get_bytes(MANIFEST_KEY)
        except ObjectNotFound:
            return None
        return Manifest.from_json(raw)

    def sidecar(self, version: str) -> Manifest:
        """The manifest a version was published with (raises ObjectNotFound)."""
        raw, _ = self.store.get_bytes(manifest_key_for(version))
        return Manifest.from_json(raw)

    def is_unchanged(self, fingerprint: str | None, current: Manifest | None = None) -> bool:
        """True when publishing data with this fingerprint would change nothing.

        Also true when the current manifest is a rollback away from exactly this
        data: the operator's rollback holds until the source really changes.
        """
        if fingerprint is None:
            return False
        if current is None:
            current, _ = self.read_current()
        if current is None:
            return False
        if current.content_fingerprint == fingerprint:
            return True
        if current.rolled_back_from:
            try:
                rolled_back = self.sidecar(current.rolled_back_from)
            except (ObjectNotFound, ManifestError):
                return False
            return rolled_back.content_fingerprint == fingerprint
        return False

    def versions(self, with_manifests: bool = True) -> list[PublishedVersion]:
        """Every version in `history/`, newest first (manifests read on request)."""
        current, _ = self.read_current()
        groups: dict[str, dict[str, ObjectInfo]] = {}
        for obj in self.store.list(HISTORY_PREFIX):
            match = _HISTORY_KEY.match(obj.key)
            if match:
                groups.setdefault(match["version"], {})[match["ext"]] = obj
        result = []
        for version in sorted(groups, reverse=True):
            objects = groups[version]
            manifest = None
            if with_manifests and "json" in objects:
                try:
                    manifest = self.sidecar(version)
                except (StoreError, ManifestError) as exc:
                    log.warning("version_manifest_unreadable", version=version, error=str(exc))
            result.append(
                PublishedVersion(
                    version=version,
                    manifest=manifest,
                    snapshot=objects.get("db.zst") or objects.get("db"),
                    sidecar=objects.get("json"),
                    current=current is not None and current.version == version,
                )
            )
        return result

    # -- writing -----------------------------------------------------------
    def publish(
        self,
        snapshot: SnapshotFile,
        tables: dict[str, TableInfo],
        *,
        models: dict[str, ModelInfo] | None = None,
        schema_changes: list[SchemaChange] | None = None,
    ) -> Manifest:
        """Publish `snapshot` (a plain DuckDB file) and return the current manifest.

        When its fingerprint equals the current version's, nothing is uploaded
        and the current manifest is returned (`last_publish_skipped` is set).
        """
        self.last_publish_skipped = False
        previous, etag = self.read_current()
        if previous is not None and self.is_unchanged(snapshot.fingerprint, previous):
            self.last_publish_skipped = True
            log.info("publish_skipped_unchanged", version=previous.version)
            return previous
        stored = snapshot
        if self.compression == "zstd" and snapshot.compression is None:
            stored = compress_snapshot(snapshot)
        now = datetime.now(UTC)
        version = new_version_id(now)
        key = snapshot_key_for(version, stored.compression)
        manifest = Manifest(
            version=version,
            created_at=now,
            snapshot_key=key,
            sha256=stored.sha256,
            size=stored.size,
            compression=stored.compression,
            previous_version=previous.version if previous else None,
            tables=tables,
            content_fingerprint=snapshot.fingerprint,
            models=models or {},
            schema_changes=schema_changes or [],
        )
        info = self.store.put_file(key, stored.path)
        if info.size != stored.size:
            raise StoreError(f"{key}: the store holds {info.size} bytes, uploaded {stored.size}")
        self.store.put_bytes(manifest_key_for(version), manifest.to_json())
        self.commit(manifest, etag)
        log.info(
            "snapshot_published",
            version=version,
            key=key,
            size=stored.size,
            compression=stored.compression,
            previous=manifest.previous_version,
        )
        # After the commit point nothing may fail the cycle: the version is out.
        self.update_convenience_copy(snapshot.path)
        try:
            self.apply_retention(keep_key=key)
        except (StoreError, ManifestError) as exc:
            log.warning("retention_failed", error=str(exc))
        if stored is not snapshot:
            stored.path.unlink(missing_ok=True)
        return manifest

    def commit(self, manifest: Manifest, expected_etag: str | None) -> None:
        """Write `current/manifest.json` if nobody changed it since `expected_etag`."""
        body = manifest.to_json()
        try:
            if expected_etag is None:
                self.store.put_bytes(MANIFEST_KEY, body, if_none_match="*")
            else:
                self.store.put_bytes(MANIFEST_KEY, body, if_match=expected_etag)
        except PreconditionFailed:
            # A retried PUT whose first attempt landed also answers 412: look.
            try:
                now, _ = self.read_current()
            except StoreError:
                now = None
            if (
                now is not None
                and now.version == manifest.version
                and now.sha256 == manifest.sha256
            ):
                return
            raise ManifestConflict(
                f"current/manifest.json changed while publishing {manifest.version}"
                f" (now {now.version if now else 'unknown'}); another writer is active"
            ) from None

    def update_convenience_copy(self, plain_db: Path) -> None:
        """`current/analytics.db` for humans and tools; nothing reads it to decide."""
        try:
            self.store.put_file(CONVENIENCE_KEY, plain_db)
        except (StoreError, OSError) as exc:
            log.warning("convenience_copy_failed", error=str(exc))

    def apply_retention(self, keep_key: str | None = None) -> list[str]:
        """Keep the newest `retention` snapshots, the current one, and anything
        younger than the grace period; delete the rest. Returns deleted keys."""
        current, _ = self.read_current()
        if current is None:
            return []  # without a readable commit point, deleting anything is a guess
        keep_version = _HISTORY_KEY.match(keep_key) if keep_key else None
        versions = self.versions(with_manifests=False)  # one LIST, no GET per version
        with_snapshot = [v for v in versions if v.snapshot is not None]
        keep = {v.version for v in with_snapshot[: self.retention]}
        keep.add(current.version)
        if keep_version:
            keep.add(keep_version["version"])
        cutoff = datetime.now(UTC) - timedelta(seconds=self.grace_seconds)
        removed: list[str] = []
        for v in versions:
            if v.version in keep or v.newest_change > cutoff:
                continue
            # The snapshot goes first: a version without its manifest is never listed
            # as restorable, and a leftover manifest is removed on the next run.
            for obj in (v.snapshot, v.sidecar):
                if obj is not None:
                    self.store.delete(obj.key)
                    removed.append(obj.key)
        if removed:
            log.info("snapshots_pruned", removed=len(removed), kept=len(keep))
        return removed

    # -- rollback ----------------------------------------------------------
    def fetch_verified(self, manifest: Manifest, workdir: Path) -> Path:
        """Download a version's snapshot, verify it, return the plain file."""
        workdir.mkdir(parents=True, exist_ok=True)
        return fetch_verified(self.store, manifest, workdir / f"{manifest.version}.db")
