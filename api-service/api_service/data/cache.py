"""The host's shared snapshot file cache, used by every Gunicorn worker of one host.

    .cache.lock        serialises downloads and deletions across workers
    <version>.db       a verified, plain DuckDB file
    <version>.ok       its manifest, written last: the file is verified
    <version>.pin      every process with the version open holds a shared
                       flock on it; deletion needs the exclusive one
    <version>.db.tmp/  DuckDB's spill directory for that version (one
                       subdirectory per worker process: `spill_directory`)

In lake mode the host's replicator (data/lake_replica.py) writes the
versions: `install` moves its verified copy of the replica (models built)
in as `<version>.db` and writes the `.ok` last, under the same lock; workers
only pin what is there.

What must always hold: a `.db` file is trusted only while its `.ok` marker
matches the manifest's size and sha256; a version is downloaded at most once
per host (under the lock); a file is deleted only when no process holds its
pin, marker first, so a half-deleted version is never taken as verified;
clean-up removes files and directories alike and one version that cannot be
deleted never stops the others (nor the next run).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import Manifest, ManifestError
from analytics_shared.object_store import ObjectStore
from analytics_shared.snapshot_file import fetch_verified
from api_service.errors import SnapshotError

__all__ = ["Pin", "SnapshotCache"]

log = get_logger(__name__)

_LOCK_NAME = ".cache.lock"
_SUFFIXES = (".db.tmp", ".ok.tmp", ".db.download", ".db", ".ok", ".pin")


class Pin:
    """A shared flock on `<version>.pin`: this process has the version open."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None


class SnapshotCache:
    def __init__(self, store: ObjectStore, directory: Path, *, lock_timeout: float = 600.0) -> None:
        self.store = store
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout

    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        lock = FileLock(str(self.directory / _LOCK_NAME), timeout=timeout)
        try:
            lock.acquire()
        except LockTimeout:
            raise SnapshotError(
                f"the snapshot cache is locked by another worker for over {timeout:g} s"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def fetch(self, manifest: Manifest) -> tuple[Path, Pin]:
        """The verified local file for `manifest`, pinned; downloads it at most once per host."""
        path = self.directory / f"{manifest.version}.db"
        ok_marker = path.with_suffix(".ok")
        with self.lock(self.lock_timeout):
            if path.exists() and _marker_matches(ok_marker, manifest):
                # Another worker verified it; pin before the lock goes so no
                # garbage collection can slip in between.
                return path, Pin(path.with_suffix(".pin"))
            ok_marker.unlink(missing_ok=True)
            fetch_verified(self.store, manifest, path)
            tmp = ok_marker.with_suffix(".ok.tmp")
            tmp.write_bytes(manifest.to_json())
            os.replace(tmp, ok_marker)
            log.info("snapshot_downloaded", version=manifest.version, size=manifest.size)
            return path, Pin(path.with_suffix(".pin"))

    def spill_directory(self, version: str) -> Path:
        """This process's DuckDB temp_directory for `version` (removed with the version)."""
        return self.directory / f"{version}.db.tmp" / str(os.getpid())

    def remove_orphan_spill_dirs(self) -> None:
        """Temp directories of worker processes that are gone (killed, restarted). Best effort."""
        for spill in self.directory.glob("*.db.tmp/*"):
            if spill.name.isdigit() and not Path(f"/proc/{spill.name}").exists():
                shutil.rmtree(spill, ignore_errors=True)

    def pin_ready(self, manifest: Manifest) -> tuple[Path, Pin] | None:
        """The verified local file for `manifest`, pinned, if it is already here
        (lake mode: the replicator puts it there; workers never download)."""
        path = self.directory / f"{manifest.version}.db"
        with self.lock(timeout=5):
            if path.exists() and _marker_matches(path.with_suffix(".ok"), manifest):
                return path, Pin(path.with_suffix(".pin"))
        return None

    def has(self, manifest: Manifest) -> bool:
        path = self.directory / f"{manifest.version}.db"
        return path.exists() and _marker_matches(path.with_suffix(".ok"), manifest)

    def install(self, manifest: Manifest, source: Path, *, move: bool = False) -> Path:
        """Put a verified file in as `manifest`'s version; the `.ok` marker last.
        `move`: `source` (on the cache's file system) is renamed, not copied."""
        path = self.directory / f"{manifest.version}.db"
        ok_marker = path.with_suffix(".ok")
        with self.lock(self.lock_timeout):
            ok_marker.unlink(missing_ok=True)
            if move:
                os.replace(source, path)
            else:
                tmp = path.with_suffix(".db.download")  # (.db.tmp/ is the spill directory)
                shutil.copyfile(source, tmp)
                os.replace(tmp, path)
            tmp_ok = ok_marker.with_suffix(".ok.tmp")
            tmp_ok.write_bytes(manifest.to_json())
            os.replace(tmp_ok, ok_marker)
        log.info("replica_installed", version=manifest.version)
        return path

    def markers(self) -> list[Path]:
        """The `.ok` markers of verified versions, newest first."""
        return sorted(self.directory.glob("*.ok"), key=lambda p: p.stat().st_mtime, reverse=True)

    def pin_verified(self, marker: Path) -> tuple[Manifest, Path, Pin] | None:
        """The version a marker vouches for, pinned; None if its file is gone or differs."""
        manifest = Manifest.from_json(marker.read_bytes())
        with self.lock(timeout=5):
            path = marker.with_suffix(".db")
            if not (path.exists() and _marker_matches(marker, manifest)):
                return None
            return manifest, path, Pin(path.with_suffix(".pin"))

    def discard(self, version: str) -> None:
        with contextlib.suppress(SnapshotError), self.lock(self.lock_timeout):
            self._delete_if_unused(version)

    def collect_garbage(self, keep: set[str]) -> None:
        """Delete cached versions outside `keep` that no worker on this host has open.
        Best effort."""
        versions = {_version_of(p.name) for p in self.directory.iterdir()}
        stale = {v for v in versions if v and v not in keep}
        if not stale:
            return
        deleted = []
        try:
            with self.lock(timeout=0):
                for version in sorted(stale):
                    try:
                        if self._delete_if_unused(version):
                            deleted.append(version)
                    except OSError as exc:  # this one waits for the next run; the others go
                        log.warning(
                            "snapshot_cache_cleanup_failed", version=version, error=str(exc)
                        )
        except SnapshotError:
            return  # a download is in progress; the next refresh tries again
        if deleted:
            log.info("snapshot_files_deleted", versions=deleted)

    def _delete_if_unused(self, version: str) -> bool:
        """Delete a version's files unless a process still has it open (caller holds the lock)."""
        pin_path = self.directory / f"{version}.pin"
        fd = os.open(pin_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # some worker (maybe this one) still reads it
            # Marker first: a half-deleted version is never taken as verified.
            for suffix in (".ok", ".db", ".db.tmp", ".db.download", ".ok.tmp"):
                _remove(self.directory / f"{version}{suffix}")
            pin_path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    """Delete a file or a whole directory (DuckDB's spill directory); absent is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _version_of(name: str) -> str | None:
    """The version a cache file belongs to (None for the lock and foreign files)."""
    if name.startswith("."):
        return None
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] or None
    return None


def _marker_matches(marker: Path, manifest: Manifest) -> bool:
    try:
        verified = Manifest.from_json(marker.read_bytes())
    except (OSError, ManifestError):
        return False
    return verified.sha256 == manifest.sha256 and verified.size == manifest.size
