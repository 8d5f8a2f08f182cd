"""Lake mode's per-host replicator: a local DuckDB replica advanced by the change.

One replicator runs per API host (started by the Gunicorn master, or as
`analytics-api replicate`; a file lock in the cache directory keeps it
single). Each round, for a lake manifest (`manifest.lake`) this host has not
served yet:

1. plan (a 1.5.5 lake process): which data and delete files the snapshots
   between the replica's and the manifest's use;
2. mirror exactly those files from the store into `<cache>/lake/mirror/`
   (a cycle moves only its new files to the host);
3. advance the private replica `<cache>/lake/replica.db` by the lake's change
   feed (a 1.5.5 process writes it; keyed on the primary key, maintenance
   snapshots skipped), or bootstrap it when the replica is missing, behind the
   retention, or after a schema change;
4. verify it here (DuckDB 2.0.1, like the workers): every table's row count
   and order-independent checksum must equal the manifest's, else bootstrap
   once more, else refuse;
5. copy the replica, build the models into the copy from the lake's
   `__analytics_models` (DuckDB 2.0.1, in one transaction; the table is then
   dropped, so users never see it), check the models' row counts, and move
   the copy in as `<version>.db` + `.ok` in the shared cache (under the cache
   lock), where the workers swap to it through their lease/pin mechanism;
   then drop mirror files the new snapshot no longer uses. A model that fails
   to build fails the round (named, with DuckDB's message); the version in
   service stays. The replica itself is written only by the 1.5.5 process.

Workers never talk to the catalog or the store's lake files: they open only
the installed replica, read-only and sandboxed (data/snapshots.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
from filelock import FileLock
from filelock import Timeout as LockTimeout

from analytics_shared.lake import LAKE_PREFIX, LakeConfig, run_lake
from analytics_shared.lake_models import build_models
from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import MANIFEST_KEY, Manifest
from analytics_shared.object_store import ObjectNotFound, ObjectStore
from analytics_shared.snapshot_file import SnapshotFileError, probe, verify_checksums
from api_service.data.cache import SnapshotCache

__all__ = ["LakeReplicator", "ReplicaMismatch"]

log = get_logger(__name__)

# Checks and model builds here scan the replica: without a limit DuckDB would keep
# the whole file in its buffer pool (80% of the machine's RAM by default); past
# it, model builds spill to the copy's temp directory.
REPLICA_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "memory_limit": "64MB",
    "threads": 2,
}


class ReplicaMismatch(SnapshotFileError):
    """The replica does not hold the rows its manifest promises."""


class LakeReplicator:
    def __init__(self, store: ObjectStore, config: LakeConfig, cache: SnapshotCache) -> None:
        self.store = store
        self.config = config
        self.cache = cache
        self.workdir = cache.directory / "lake"
        self.mirror = self.workdir / "mirror"
        self.replica = self.workdir / "replica.db"
        self.state_path = self.workdir / "replica.json"
        self.status_path = cache.directory / "lake-status.json"
        self.mirror.mkdir(parents=True, exist_ok=True)
        self.status: dict[str, Any] = {"bytes_downloaded_total": 0, "bootstraps_total": 0}

    # -- one round -----------------------------------------------------------------

    def run_once(self) -> str | None:
        """Bring the host to the manifest's lake version; its version when installed now."""
        try:
            raw, _ = self.store.get_bytes(MANIFEST_KEY)
        except ObjectNotFound:
            return None
        manifest = Manifest.from_json(raw)
        if manifest.lake is None:
            return None
        self._note_published(manifest)
        if self.cache.has(manifest):
            return None
        started = time.monotonic()
        downloaded = self._advance_or_bootstrap(manifest)
        try:
            self._verify(manifest)
        except (ReplicaMismatch, SnapshotFileError, duckdb.Error) as exc:
            log.warning("replica_mismatch_bootstrapping", version=manifest.version, error=str(exc))
            downloaded += self._bootstrap(manifest)
            self._verify(manifest)
        self.cache.install(manifest, self._with_models(manifest), move=True)
        self.status.update(
            version=manifest.version,
            snapshot_id=manifest.lake.snapshot_id,
            last_round_seconds=round(time.monotonic() - started, 3),
            last_round_bytes=downloaded,
            last_error=None,
            updated_at=time.time(),
        )
        self.status["bytes_downloaded_total"] += downloaded
        self._write_status()
        log.info("replica_advanced", **{k: v for k, v in self.status.items() if k != "updated_at"})
        return manifest.version

    def _note_published(self, manifest: Manifest) -> None:
        """What the store publishes now: /health measures the replica's lag against it
        (api_service.data.snapshots), also while the rounds fail."""
        assert manifest.lake is not None
        if self.status.get("published_version") == manifest.version:
            return
        self.status.update(
            published_version=manifest.version,
            published_snapshot_id=manifest.lake.snapshot_id,
            published_at=manifest.created_at.timestamp(),
        )
        self._write_status()

    def _state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return state if self.replica.exists() and isinstance(state, dict) else None

    def _save_state(self, snapshot_id: int) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"snapshot_id": snapshot_id}))
        os.replace(tmp, self.state_path)

    def _request(self, manifest: Manifest, **extra: Any) -> dict[str, Any]:
        assert manifest.lake is not None
        return {"mirror": str(self.mirror), "tables": list(manifest.lake.primary_keys), **extra}

    def _advance_or_bootstrap(self, manifest: Manifest) -> int:
        assert manifest.lake is not None
        target = manifest.lake.snapshot_id
        state = self._state()
        if state is None or int(state["snapshot_id"]) > target:
            return self._bootstrap(manifest)
        after = int(state["snapshot_id"])
        if after == target:
            return 0
        plan = run_lake(self.config, "plan", self._request(manifest, after=after, to=target))
        if not plan["kept"]:
            log.info("replica_behind_retention", snapshot_id=after)
            return self._bootstrap(manifest)
        downloaded = self._mirror(plan["files"])
        answer = run_lake(
            self.config,
            "advance",
            {
                "mirror": str(self.mirror),
                "replica": str(self.replica),
                "from": after,
                "to": target,
                "tables": manifest.lake.primary_keys,
            },
        )
        if answer.get("bootstrap_needed"):
            log.info("replica_bootstrap_needed", reason=answer["bootstrap_needed"])
            return downloaded + self._bootstrap(manifest)
        self._save_state(target)
        self._prune(plan["target_files"])
        return downloaded

    def _bootstrap(self, manifest: Manifest) -> int:
        assert manifest.lake is not None
        target = manifest.lake.snapshot_id
        plan = run_lake(self.config, "plan", self._request(manifest, after=None, to=target))
        downloaded = self._mirror(plan["target_files"])
        self.state_path.unlink(missing_ok=True)
        run_lake(
            self.config,
            "bootstrap",
            self._request(manifest, replica=str(self.replica), snapshot_id=target),
        )
        self._save_state(target)
        self._prune(plan["target_files"])
        self.status["bootstraps_total"] += 1
        return downloaded

    def _mirror(self, files: dict[str, int]) -> int:
        """Download the files the mirror lacks; their total size."""
        downloaded = 0
        for rel, size in files.items():
            dest = self._mirror_path(rel)
            if dest.exists() and dest.stat().st_size == size:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            self.store.get_file(LAKE_PREFIX + rel, tmp)
            os.replace(tmp, dest)
            downloaded += size
        return downloaded

    def _mirror_path(self, rel: str) -> Path:
        path = (self.mirror / rel).resolve()
        if not path.is_relative_to(self.mirror.resolve()):
            raise ReplicaMismatch(f"the catalog names a file outside the lake: {rel}")
        return path

    def _prune(self, keep: dict[str, int]) -> None:
        wanted = {self._mirror_path(rel) for rel in keep}
        for path in self.mirror.rglob("*"):
            if path.is_file() and path.resolve() not in wanted:
                path.unlink(missing_ok=True)

    def _verify(self, manifest: Manifest) -> None:
        """The replica's tables (the models' definitions too) are the manifest's."""
        con = duckdb.connect(str(self.replica), read_only=True, config=REPLICA_CONFIG)
        try:
            probe(con, manifest.model_copy(update={"models": {}}))  # built later, in the copy
            verify_checksums(con, manifest)
        finally:
            con.close()

    def _with_models(self, manifest: Manifest) -> Path:
        """A copy of the verified replica with the models built, ready to install."""
        copy = self.workdir / "install.db"
        wal = copy.with_name(copy.name + ".wal")
        for stale in (copy, wal):
            stale.unlink(missing_ok=True)
        shutil.copyfile(self.replica, copy)
        try:
            con = duckdb.connect(str(copy), config=REPLICA_CONFIG)
            try:
                build_models(con, manifest.version)
                # The models hold the rows the ETL counted (tables were verified above).
                probe(con, manifest.model_copy(update={"tables": {}}))
                con.execute("CHECKPOINT").fetchall()
            finally:
                con.close()
        except BaseException:
            copy.unlink(missing_ok=True)
            wal.unlink(missing_ok=True)
            raise
        return copy

    def _write_status(self) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status, default=str))
        os.replace(tmp, self.status_path)

    # -- the loop ------------------------------------------------------------------

    def run_forever(self, interval: float, stop: threading.Event) -> None:
        """Rounds every `interval` seconds until `stop`; a failed round keeps the
        replica in service and is retried, after twice the wait each time it fails
        again (at most 8 intervals): a round that cannot succeed (the catalog down,
        a lake process killed for memory) must not restart work every interval."""
        lock = FileLock(str(self.cache.directory / ".replicator.lock"))
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            log.info("replicator_already_running", cache=str(self.cache.directory))
            stop.wait()
            return
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                    failures = 0
                except Exception as exc:  # the store or catalog is down: serve what we have
                    failures += 1
                    self.status.update(last_error=f"{type(exc).__name__}: {exc}")
                    self._write_status()
                    log.warning("replica_round_failed", error=self.status["last_error"])
                stop.wait(interval * min(8, 2 ** max(0, failures - 1)))
        finally:
            lock.release()


def replicate(settings: Any) -> None:
    """`analytics-api replicate`: the host's replicator, until SIGTERM/SIGINT."""
    store = settings.open_store()
    catalog = settings.lake_catalog_url
    config = LakeConfig.from_settings(settings, catalog.get_secret_value() if catalog else None)
    replicator = LakeReplicator(store, config, SnapshotCache(store, settings.cache_dir))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    replicator.run_forever(settings.snapshot_poll_seconds, stop)
