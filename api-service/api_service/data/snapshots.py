"""The API's view of the data: the latest verified snapshot, opened read-only.

`SnapshotManager.refresh()` reads the manifest (cheaply, with If-None-Match);
any version other than the one in service is loaded (a rollback names an older
one): downloaded once per host under a file lock (other Gunicorn workers open
the verified file), checked against the manifest's size and sha256,
decompressed, opened in the sandboxed read-only mode and probed (every table's
row count must match the manifest) before it is swapped in. Anything that
fails leaves the version in service untouched, and is logged and counted.

Queries lease the snapshot they started on, so a swap never pulls data from
under a running query; the old one closes when its last lease ends, and its
file is deleted once no worker on the host has it open. The host's shared
file cache (lock, pins, markers, downloads, deletions) is `SnapshotCache`
(data/cache.py); this module decides which version serves.

What must always hold: only a verified, probed snapshot is swapped in; a
refresh never raises and never disturbs the version in service.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import MANIFEST_KEY, Manifest, ManifestError
from analytics_shared.object_store import (
    NotModified,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    StoreUnavailable,
)
from analytics_shared.snapshot_file import SnapshotFileError, probe
from api_service.data.cache import Pin, SnapshotCache
from api_service.errors import NoSnapshot, SnapshotError

__all__ = ["Snapshot", "SnapshotManager", "open_sandboxed"]

log = get_logger(__name__)


DUCKDB_FLUSH_THRESHOLD = "8MB"


def open_sandboxed(
    path: Path,
    *,
    memory_limit: str,
    threads: int,
    temp_directory: Path | None = None,
    max_temp_directory_size: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """Read-only connection that cannot reach files, the network or extensions.

    With `temp_directory`, sorts and joins past `memory_limit` spill there (up
    to `max_temp_directory_size`) instead of failing or growing."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False,
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "python_enable_replacements": False,
        "memory_limit": memory_limit,
        "threads": threads,
        # DuckDB's own allocator (jemalloc) keeps freed pages until 128 MiB of
        # them pile up, on top of `memory_limit`: purge in the background, and
        # after any task past a few MiB, so its resident memory follows the limit
        # (ops/memory_budget.py, DUCKDB_OVERSHOOT).
        "allocator_flush_threshold": DUCKDB_FLUSH_THRESHOLD,
        "allocator_background_threads": True,
    }
    if temp_directory is not None:
        # DuckDB refuses a temp_directory once external access is off, so that
        # is switched off right after opening, before anything else runs.
        temp_directory.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(temp_directory)
        del config["enable_external_access"]
        if max_temp_directory_size:
            config["max_temp_directory_size"] = max_temp_directory_size
    con = duckdb.connect(str(path), read_only=True, config=config)
    # One process may open a file twice (a rollback to a version whose last
    # queries still run): DuckDB then shares the instance, already locked.
    row = con.execute("SELECT current_setting('lock_configuration')").fetchone()
    if not (row and row[0]):
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


class Snapshot:
    def __init__(
        self,
        manifest: Manifest,
        path: Path,
        con: duckdb.DuckDBPyConnection,
        pin: Pin | None = None,
        on_closed: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self.con = con
        self._pin = pin
        self._on_closed = on_closed
        self._leases = 0
        self._retired = False
        self.closed = False
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
            close = self._retired and self._leases == 0 and not self.closed
            if close:
                self.closed = True
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._leases == 0 and not self.closed
            if close:
                self.closed = True
        if close:
            self._close()

    def _close(self) -> None:
        try:
            self.con.close()  # DuckDB deletes its temp files
        finally:
            if self._pin is not None:
                self._pin.release()
        log.info("snapshot_closed", version=self.version)
        if self._on_closed is not None:
            self._on_closed(self)


class SnapshotManager:
    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        *,
        memory_limit: str = "1GB",
        threads: int = 2,
        lock_timeout: float = 600.0,
        retry_max_seconds: float = 300.0,
        max_spill_size: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock  # monotonic seconds; injectable so tests can move time
        self.cache = SnapshotCache(store, cache_dir, lock_timeout=lock_timeout)
        # DuckDB's temp files: one directory per version and worker process
        # (cache.spill_directory), bounded by `max_spill_size`.
        self.max_spill_size = max_spill_size
        self.cache.remove_orphan_spill_dirs()
        self.memory_limit = memory_limit
        self.threads = threads
        self.retry_max_seconds = retry_max_seconds
        self._current: Snapshot | None = None
        self._open: dict[str, int] = {}  # version -> Snapshot objects not yet closed
        self._swap_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._manifest_etag: str | None = None
        self.latest_version_seen: str | None = None
        self.last_refresh_at: float | None = None
        self.last_refresh_error: str | None = None
        self.serving_cached = False  # started from the local cache while the store was down
        self.refresh_failures = 0
        self.verification_failures = 0
        self.swaps = 0
        # Refused versions are not retried on every poll:
        # (version, sha256) -> (failures, retry_at, reason).
        self._refused: dict[tuple[str, str], tuple[int, float, str]] = {}

    @property
    def cache_dir(self) -> Path:
        return self.cache.directory

    # -- reading -----------------------------------------------------------
    @property
    def current(self) -> Snapshot | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    @contextlib.contextmanager
    def lease(self) -> Iterator[Snapshot]:
        with self._swap_lock:
            snap = self._current
            if snap is None:
                raise NoSnapshot(
                    "no verified data snapshot is loaded yet (the API is starting or"
                    " nothing has been published); try again shortly"
                )
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
            "latest_version_seen": self.latest_version_seen,
            "up_to_date": snap is not None and snap.version == self.latest_version_seen,
            "serving_cached": self.serving_cached,
            "last_refresh_failed": self.last_refresh_error is not None,
            "last_refresh_error": self.last_refresh_error,
            "seconds_since_refresh": (
                round(self.clock() - self.last_refresh_at, 3) if self.last_refresh_at else None
            ),
            "refresh_failures_total": self.refresh_failures,
            "verification_failures_total": self.verification_failures,
            "swaps_total": self.swaps,
            "worker_pid": os.getpid(),
            **self._lake_status(),
        }

    def _lake_status(self) -> dict[str, Any]:
        """Lake mode: what this host's replicator last reported (data/lake_replica.py),
        and its lag: how many snapshots and seconds the replica is behind the
        version the store publishes (0 when it has it)."""
        try:
            replica = json.loads((self.cache_dir / "lake-status.json").read_text())
        except (OSError, ValueError):
            return {}
        published = replica.get("published_version")
        if published is None or replica.get("version") == published:
            replica.update(lag_snapshots=0, lag_seconds=0.0)
        else:
            behind = replica.get("snapshot_id")
            target = replica.get("published_snapshot_id")
            replica["lag_snapshots"] = target - behind if None not in (behind, target) else None
            replica["lag_seconds"] = round(max(0.0, time.time() - replica["published_at"]), 1)
        return {"lake_replica": replica}

    def next_poll_delay(self, interval: float) -> float:
        """Poll quickly until the first snapshot is in service, then every interval."""
        return interval if self._current is not None else min(interval, 1.0)

    # -- refreshing --------------------------------------------------------
    def refresh(self) -> bool:
        """Load the manifest's version if it is not the one in service.

        True when a swap happened. Never raises: a failure keeps the version in
        service, and is logged, counted and shown on /health.
        """
        with self._refresh_lock:
            try:
                swapped = self._refresh()
            except _Deferred as exc:
                self.last_refresh_error = str(exc)
                return False
            except Exception as exc:
                self._failed(exc)
                return False
            self.last_refresh_error = None
            self.last_refresh_at = self.clock()
            self._collect_garbage()
            return swapped

    def _failed(self, exc: Exception) -> None:
        self.refresh_failures += 1
        self.last_refresh_error = f"{type(exc).__name__}: {exc}"
        known = (StoreError, ManifestError, SnapshotError, SnapshotFileError, duckdb.Error, OSError)
        if isinstance(exc, known):
            log.warning("snapshot_refresh_failed", error=self.last_refresh_error)
        else:
            log.exception("snapshot_refresh_failed", error=self.last_refresh_error)
        if self._current is None and isinstance(exc, StoreUnavailable):
            self._serve_cached()

    def _refresh(self) -> bool:
        try:
            raw, etag = self.store.get_bytes(MANIFEST_KEY, if_none_match=self._manifest_etag)
        except NotModified:
            return False
        except ObjectNotFound:
            raise SnapshotError("nothing published yet (no current/manifest.json)") from None
        manifest = Manifest.from_json(raw)
        self.latest_version_seen = manifest.version
        if self._current is not None and self._current.version == manifest.version:
            self._manifest_etag = etag
            self.serving_cached = False
            return False
        refused = self._refused.get((manifest.version, manifest.sha256))
        if refused is not None and self.clock() < refused[1]:
            raise _Deferred(
                f"{refused[2]} (refused; next attempt in {refused[1] - self.clock():.0f} s)"
            )
        try:
            new = self._load(manifest)
        except (SnapshotError, SnapshotFileError, duckdb.Error) as exc:
            self._refuse(manifest, exc)
            if self._current is None:
                # Starting while the current version is refused (a sibling worker
                # may already serve the previous one): the newest version this
                # host verified before answers meanwhile, marked degraded.
                self._serve_cached()
            raise
        self._swap(new)
        self._manifest_etag = etag
        self.serving_cached = False
        self._refused.pop((manifest.version, manifest.sha256), None)
        return True

    def _refuse(self, manifest: Manifest, exc: Exception) -> None:
        self.verification_failures += 1
        key = (manifest.version, manifest.sha256)
        failures = self._refused.get(key, (0, 0.0, ""))[0] + 1
        delay = min(self.retry_max_seconds, 2.0**failures)
        reason = f"{type(exc).__name__}: {exc}"
        self._refused[key] = (failures, self.clock() + delay, reason)
        log.error(
            "snapshot_refused",
            version=manifest.version,
            error=f"{type(exc).__name__}: {exc}",
            retry_in_s=delay,
        )

    def _swap(self, new: Snapshot) -> None:
        with self._swap_lock:
            old, self._current = self._current, new
        self.swaps += 1
        log.info(
            "snapshot_swapped",
            version=new.version,
            previous=old.version if old else None,
            age_s=round(new.manifest.age_seconds, 3),
        )
        if old is not None:
            old.retire()

    def _load(self, manifest: Manifest) -> Snapshot:
        if manifest.lake is not None:
            # Lake mode: the host's replicator writes the version; wait for it.
            ready = self.cache.pin_ready(manifest)
            if ready is None:
                raise _Deferred(
                    f"waiting for this host's lake replicator to write {manifest.version}"
                )
            path, pin = ready
        else:
            path, pin = self.cache.fetch(manifest)
        try:
            con = self._open_probed(path, manifest)
        except (SnapshotError, SnapshotFileError, duckdb.Error):
            pin.release()
            self.cache.discard(manifest.version)  # unusable: no worker should trust it
            raise
        except BaseException:
            pin.release()
            raise
        return self._track(Snapshot(manifest, path, con, pin, self._closed))

    def _open_probed(self, path: Path, manifest: Manifest) -> duckdb.DuckDBPyConnection:
        """Open sandboxed; every table's row count must match the manifest."""
        con = open_sandboxed(
            path,
            memory_limit=self.memory_limit,
            threads=self.threads,
            temp_directory=self.cache.spill_directory(manifest.version),
            max_temp_directory_size=self.max_spill_size,
        )
        try:
            probe(con, manifest)
        except BaseException:
            con.close()
            raise
        return con

    def _track(self, snap: Snapshot) -> Snapshot:
        with self._swap_lock:
            self._open[snap.version] = self._open.get(snap.version, 0) + 1
        return snap

    def _closed(self, snap: Snapshot) -> None:
        with self._swap_lock:
            left = self._open.get(snap.version, 1) - 1
            if left:
                self._open[snap.version] = left
            else:
                self._open.pop(snap.version, None)
        if not left:
            shutil.rmtree(self.cache.spill_directory(snap.version), ignore_errors=True)
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Delete cached versions that no worker on this host has open. Best effort."""
        with self._swap_lock:
            keep = set(self._open)
        if self.latest_version_seen:
            keep.add(self.latest_version_seen)
        self.cache.collect_garbage(keep)

    def _serve_cached(self) -> None:
        """Nothing in service yet and the store is down or its current version is
        refused: serve the newest version this host verified before."""
        for marker in self.cache.markers():
            pin: Pin | None = None
            try:
                pinned = self.cache.pin_verified(marker)
                if pinned is None:
                    continue
                manifest, path, pin = pinned
                con = self._open_probed(path, manifest)
            except (OSError, ManifestError, SnapshotError, SnapshotFileError, duckdb.Error) as exc:
                if pin is not None:
                    pin.release()
                log.warning("cached_snapshot_unusable", marker=marker.name, error=str(exc))
                continue
            self._swap(self._track(Snapshot(manifest, path, con, pin, self._closed)))
            self.serving_cached = True
            log.warning("serving_cached_snapshot", version=manifest.version)
            return

    def close(self) -> None:
        with self._swap_lock:
            snap, self._current = self._current, None
        if snap is not None:
            snap.retire()


class _Deferred(Exception):
    """A refused version's retry is not due yet (not counted as a new failure)."""
