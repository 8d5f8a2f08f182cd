"""The API's view of the data: the latest verified snapshot, opened read-only.

`SnapshotManager.refresh()` reads the manifest (cheaply, with If-None-Match),
downloads a new version once per host (file lock; other Gunicorn workers open
the verified file), checks sha256 and size, opens it in the sandboxed
read-only mode and swaps it in. Queries lease the snapshot they started on, so
a swap never pulls data from under a running query; the old one closes when
its last lease ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import MANIFEST_KEY, Manifest, ManifestError, sha256_file
from analytics_shared.object_store import NotModified, ObjectNotFound, ObjectStore, StoreError
from filelock import FileLock

__all__ = ["NoSnapshot", "Snapshot", "SnapshotError", "SnapshotManager"]

log = get_logger(__name__)


class NoSnapshot(RuntimeError):
    """No verified snapshot is loaded yet (-> 503)."""


class SnapshotError(RuntimeError):
    """A snapshot failed verification or could not be opened."""


def open_sandboxed(path: Path, *, memory_limit: str, threads: int) -> duckdb.DuckDBPyConnection:
    """Read-only connection that cannot reach files, the network or extensions."""
    con = duckdb.connect(
        str(path),
        read_only=True,
        config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "python_enable_replacements": False,
            "memory_limit": memory_limit,
            "threads": threads,
        },
    )
    con.execute("SET lock_configuration = true")
    return con


class Snapshot:
    def __init__(self, manifest: Manifest, path: Path, con: duckdb.DuckDBPyConnection) -> None:
        self.manifest = manifest
        self.path = path
        self.con = con
        self._leases = 0
        self._retired = False
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.manifest.version

    def _acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def _release(self) -> None:
        with self._lock:
            self._leases -= 1
            close = self._retired and self._leases == 0
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._leases == 0
        if close:
            self._close()

    def _close(self) -> None:
        self.con.close()
        log.info("snapshot_closed", version=self.version)


class SnapshotManager:
    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        *,
        memory_limit: str = "1GB",
        threads: int = 2,
    ) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.memory_limit = memory_limit
        self.threads = threads
        self._current: Snapshot | None = None
        self._swap_lock = threading.Lock()
        self._manifest_etag: str | None = None
        self.last_refresh_at: float | None = None
        self.last_refresh_error: str | None = None
        self.refresh_failures = 0

    # -- reading -----------------------------------------------------------
    @property
    def current(self) -> Snapshot | None:
        return self._current

    @contextlib.contextmanager
    def lease(self) -> Iterator[Snapshot]:
        with self._swap_lock:
            snap = self._current
            if snap is None:
                raise NoSnapshot("no data snapshot has been loaded yet; try again shortly")
            snap._acquire()
        try:
            yield snap
        finally:
            snap._release()

    def status(self) -> dict[str, Any]:
        snap = self._current
        return {
            "ready": snap is not None,
            "data_version": snap.version if snap else None,
            "data_created_at": snap.manifest.created_at.isoformat() if snap else None,
            "data_age_seconds": round(snap.manifest.age_seconds, 3) if snap else None,
            "last_refresh_failed": self.last_refresh_error is not None,
            "last_refresh_error": self.last_refresh_error,
            "seconds_since_refresh": (
                round(time.monotonic() - self.last_refresh_at, 3) if self.last_refresh_at else None
            ),
        }

    # -- refreshing --------------------------------------------------------
    def refresh(self) -> bool:
        """Load the manifest's version if it is new. True when a swap happened."""
        try:
            swapped = self._refresh()
        except (StoreError, ManifestError, SnapshotError, duckdb.Error, OSError) as exc:
            self.refresh_failures += 1
            self.last_refresh_error = f"{type(exc).__name__}: {exc}"
            log.warning("snapshot_refresh_failed", error=self.last_refresh_error)
            return False
        self.last_refresh_error = None
        self.last_refresh_at = time.monotonic()
        return swapped

    def _refresh(self) -> bool:
        try:
            raw, etag = self.store.get_bytes(MANIFEST_KEY, if_none_match=self._manifest_etag)
        except NotModified:
            return False
        except ObjectNotFound:
            raise SnapshotError("nothing published yet (no current/manifest.json)") from None
        manifest = Manifest.from_json(raw)
        if self._current is not None and self._current.version == manifest.version:
            self._manifest_etag = etag
            return False
        path = self._fetch_verified(manifest)
        con = open_sandboxed(path, memory_limit=self.memory_limit, threads=self.threads)
        new = Snapshot(manifest, path, con)
        with self._swap_lock:
            old, self._current = self._current, new
        self._manifest_etag = etag
        log.info(
            "snapshot_swapped", version=manifest.version, previous=old.version if old else None
        )
        if old is not None:
            old.retire()
        self._prune_cache(keep={manifest.version, old.version if old else ""})
        return True

    def _fetch_verified(self, manifest: Manifest) -> Path:
        path = self.cache_dir / f"{manifest.version}.db"
        ok_marker = path.with_suffix(".ok")
        with FileLock(str(path.with_suffix(".lock")), timeout=600):
            if ok_marker.exists() and path.exists():
                return path  # another worker on this host already verified it
            download = path.with_suffix(".download")
            self.store.get_file(manifest.snapshot_key, download)
            size = download.stat().st_size
            digest = sha256_file(download)
            if size != manifest.size or digest != manifest.sha256:
                download.unlink(missing_ok=True)
                raise SnapshotError(
                    f"snapshot {manifest.version} failed verification"
                    f" (size {size} vs {manifest.size},"
                    f" sha256 {digest[:12]} vs {manifest.sha256[:12]})"
                )
            os.replace(download, path)
            ok_marker.touch()
        return path

    def _prune_cache(self, keep: set[str]) -> None:
        for entry in self.cache_dir.glob("*.db"):
            if entry.stem not in keep:
                for suffix in (".db", ".ok", ".lock"):
                    entry.with_suffix(suffix).unlink(missing_ok=True)

    def close(self) -> None:
        with self._swap_lock:
            snap, self._current = self._current, None
        if snap is not None:
            snap.retire()
