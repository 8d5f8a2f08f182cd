"""Publishing in lake mode: the cycle's changes as one DuckLake snapshot.

Order (the lake's counterpart of etl_service.publisher):

1. export what changed since the last lake commit from the working DuckDB as
   Parquet (the changed keys and their current rows; a whole table when the
   lake does not hold it in this shape: the first version, a new or reshaped
   table, after a rollback), recorded by the warehouse in the same
   transactions as the merges and reloads;
2. commit all tables in ONE DuckLake transaction (a 1.5.5 process,
   analytics_shared.lake): the snapshot id names a consistent state;
3. write `current/manifest.json` (version `lake-<snapshot_id>`, per-table row
   counts and order-independent checksums) with the same conditional PUT as
   file mode: the commit point for readers;
4. forget the sent changes; on a schedule, maintain the lake (flush inlined
   rows, merge small files, expire old snapshots, delete unused files).

The models' definitions go with step 2 as the lake table `__analytics_models`
(analytics_shared.lake_models) whenever they differ from what the published
version holds or from what this process last sent (so after a restart, or a
commit whose manifest was never written, they are sent once more); the lake
process writes them only when they differ from what the lake holds, so a
re-send changes nothing. API hosts build the models from that table.

A crash before 4 re-sends the same keys next cycle; applying them again
gives the same tables, so the lake, the manifest and the working DuckDB
agree after the next successful cycle. A table still to be sent whole is
sent whole again: needed when the crash came before the commit (the lake
lacks the table in this shape); redundant but unavoidable when it came after
it, as nothing tells this process the commit landed. The checksums are
computed before the commit so that window is only the manifest's PUT
(docs/architecture.md, "Lake mode": kill -9 and restarts).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from analytics_shared.lake import LAKE_PREFIX, LakeConfig, run_lake
from analytics_shared.lake_models import (
    MODELS_PRIMARY_KEY,
    MODELS_TABLE,
    LakeModel,
    create_models_table,
)
from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import LakeInfo, Manifest, ModelInfo, SchemaChange, TableInfo
from analytics_shared.snapshot_file import quote_ident, table_checksum
from etl_service.publisher import Publisher

if TYPE_CHECKING:
    from etl_service.settings import EtlSettings
    from etl_service.warehouse import Warehouse

__all__ = ["LakePublisher", "lake_version"]

log = get_logger(__name__)


def lake_version(snapshot_id: int) -> str:
    return f"lake-{snapshot_id}"


class LakePublisher:
    def __init__(
        self,
        manifests: Publisher,
        config: LakeConfig,
        outgoing: Path,
        *,
        maintenance_interval_seconds: float = 3600.0,
        retention_seconds: float = 86400.0,
    ) -> None:
        self.manifests = manifests  # reads and conditionally writes current/manifest.json
        self.config = config
        self.outgoing = Path(outgoing)
        self.maintenance_interval_seconds = maintenance_interval_seconds
        self.retention_seconds = retention_seconds
        self._last_maintenance = time.monotonic()
        self._checksums: dict[str, str] = {}
        # Checksum of the model definitions this process last committed to the lake.
        self._models_sent: str | None = None
        self.last_commit: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: EtlSettings, manifests: Publisher) -> LakePublisher:
        catalog = settings.lake_catalog_url
        return cls(
            manifests,
            LakeConfig.from_settings(
                settings,
                catalog.get_secret_value() if catalog else settings.resolved_database_url,
            ),
            settings.data_dir / "lake-outgoing",
            maintenance_interval_seconds=settings.lake_maintenance_interval_seconds,
            retention_seconds=settings.lake_snapshot_retention_seconds,
        )

    def publish(
        self,
        warehouse: Warehouse,
        primary_keys: dict[str, list[str]],
        tables: dict[str, TableInfo],
        *,
        schema_changes: list[SchemaChange] | None = None,
        models: dict[str, ModelInfo] | None = None,
        definitions: list[LakeModel] | None = None,
    ) -> Manifest:
        """`models`: the built models as the manifest records them; `definitions`:
        their SQL, which the lake carries for the API hosts to build them."""
        if MODELS_TABLE in tables:
            raise ValueError(f"{MODELS_TABLE} is reserved for the models' definitions")
        previous, etag = self.manifests.read_current()
        full, keyed = warehouse.pending_changes()
        if previous is None or previous.lake is None:
            full |= set(tables)  # the first lake version (or a switch from file mode)
        full &= set(tables)
        keyed &= set(tables)
        shutil.rmtree(self.outgoing, ignore_errors=True)
        requests = []
        for name in sorted(full | keyed):
            files = warehouse.export_changes(
                name, primary_keys[name], self.outgoing, full=name in full
            )
            requests.append({"name": name, "primary_key": primary_keys[name], **files})
        models_checksum, models_request = self._models_request(definitions or [], previous)
        if models_request is not None:
            requests.append(models_request)
        # Before the commit (the working DuckDB does not change until the records
        # are cleared): a kill between the commit and the manifest, which resends
        # any table sent whole, then has no checksum scans to hit.
        for name in tables:
            if name in full or name in keyed or name not in self._checksums:
                self._checksums[name] = table_checksum(warehouse.con, name)
        started = time.monotonic()
        answer = run_lake(self.config, "publish", {"tables": requests})
        snapshot_id = int(answer["snapshot_id"])
        self._models_sent = models_checksum
        self.last_commit = {
            "snapshot_id": snapshot_id,
            "tables": answer.get("tables", {}),
            "commit_seconds": round(time.monotonic() - started, 3),
            "sent_bytes": sum(p.stat().st_size for p in self.outgoing.glob("*.parquet")),
            "lake_peak_rss_mb": answer.get("peak_rss_mb"),
        }
        checksums = {name: self._checksums[name] for name in sorted(tables)}
        checksums[MODELS_TABLE] = models_checksum
        keys = {**primary_keys, MODELS_TABLE: MODELS_PRIMARY_KEY}
        manifest = self.manifest_for(snapshot_id, tables, checksums, keys, previous, models)
        manifest = manifest.model_copy(update={"schema_changes": schema_changes or []})
        if (
            previous is not None
            and previous.lake is not None
            and previous.sha256 == manifest.sha256
        ):
            log.info("publish_skipped_unchanged", version=previous.version)
            warehouse.clear_changes(sorted(full | keyed))
            return previous
        self.manifests.commit(manifest, etag)
        warehouse.clear_changes(sorted(full | keyed))
        shutil.rmtree(self.outgoing, ignore_errors=True)
        log.info("lake_published", version=manifest.version, **self.last_commit)
        self.maintain_if_due()
        return manifest

    def forget_sent_models(self) -> None:
        """The lake's definitions changed behind this process (rollback): send again."""
        self._models_sent = None

    def _models_request(
        self, definitions: list[LakeModel], previous: Manifest | None
    ) -> tuple[str, dict[str, Any] | None]:
        """The definitions' checksum, and the request that sends them as the whole
        `__analytics_models` table unless the lake already holds them."""
        con = duckdb.connect()
        try:
            create_models_table(con, definitions)
            checksum = table_checksum(con, MODELS_TABLE)
            held = previous.lake.checksums.get(MODELS_TABLE) if previous and previous.lake else None
            if checksum == held == self._models_sent:
                return checksum, None
            self.outgoing.mkdir(parents=True, exist_ok=True)
            path = self.outgoing / f"{MODELS_TABLE}.parquet"
            target = "'" + str(path).replace("'", "''") + "'"
            con.execute(f"COPY {quote_ident(MODELS_TABLE)} TO {target} (FORMAT parquet)")
        finally:
            con.close()
        request = {
            "name": MODELS_TABLE,
            "primary_key": MODELS_PRIMARY_KEY,
            "full": str(path),
            "unless_equal": True,  # a re-send of what the lake holds writes nothing
        }
        return checksum, request

    def manifest_for(
        self,
        snapshot_id: int,
        tables: dict[str, TableInfo],
        checksums: dict[str, str],
        primary_keys: dict[str, list[str]],
        previous: Manifest | None,
        models: dict[str, ModelInfo] | None = None,
    ) -> Manifest:
        """`checksums` and `primary_keys` cover every lake table the replica
        carries (the definitions' table too); `tables` only those users read."""
        content = json.dumps({"snapshot_id": snapshot_id, "checksums": checksums}, sort_keys=True)
        return Manifest(
            version=lake_version(snapshot_id),
            created_at=datetime.now(UTC),
            snapshot_key=LAKE_PREFIX,
            # In lake mode sha256/size identify the replica's content, not a file.
            sha256=hashlib.sha256(content.encode()).hexdigest(),
            size=max(1, sum(t.row_count for t in tables.values())),
            compression=None,
            previous_version=previous.version if previous else None,
            tables=tables,
            models=models or {},
            lake=LakeInfo(
                snapshot_id=snapshot_id,
                metadata_schema=self.config.metadata_schema,
                checksums=checksums,
                primary_keys={n: primary_keys[n] for n in checksums},
            ),
        )

    def maintain_if_due(self) -> dict[str, Any] | None:
        """Compaction and retention, at most once per interval; never fails the cycle."""
        if time.monotonic() - self._last_maintenance < self.maintenance_interval_seconds:
            return None
        self._last_maintenance = time.monotonic()
        return self.maintain()

    def maintain(self) -> dict[str, Any] | None:
        try:
            current = self.manifests.current()
            done = run_lake(
                self.config,
                "maintain",
                {
                    "retention_seconds": int(self.retention_seconds),
                    # The manifest's snapshot stays, whatever its age.
                    "keep_from": current.lake.snapshot_id if current and current.lake else None,
                },
            )
        except Exception as exc:  # maintenance is best effort: the next interval retries
            log.warning("lake_maintenance_failed", error=str(exc))
            return None
        log.info("lake_maintained", **{k: v for k, v in done.items() if k != "ok"})
        return done
