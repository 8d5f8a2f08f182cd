"""Lake mode's versions: the lake's data snapshots, and rollback to one of them.

A version is `lake-<snapshot_id>`. Rollback never rewrites the history the
replicas follow: it commits a NEW snapshot whose tables equal the old one's
(the lake's `restore`), checks it (row counts and checksums, read back from
the lake), then points `current/manifest.json` at it. Replicas advance to it
by the change feed like to any other snapshot, so the API swaps within a poll.

The models' definitions (`__analytics_models`) are restored with the data,
so the rolled-back version serves the models as they were; a version from
before the lake carried them gets none. The manifest's model records are
read back like the tables: the models are built from the restored
definitions over the restored tables.

The working DuckDB keeps the newer data; its tables are marked to be sent
whole with the next commit, so the first cycle that sees a source change
brings the lake back to the working DuckDB (file mode's rule: the rollback
holds until the source changes); the current definitions go with it.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from analytics_shared.lake import LakeError, run_lake
from analytics_shared.lake_models import MODELS_TABLE, build_models, model_infos
from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import ColumnSchema, Manifest, ModelInfo, TableInfo
from analytics_shared.snapshot_file import table_checksum
from etl_service.errors import RollbackError
from etl_service.lake_publisher import lake_version

if TYPE_CHECKING:
    from etl_service.lake_publisher import LakePublisher
    from etl_service.warehouse import Warehouse

__all__ = ["lake_rollback", "lake_status", "lake_versions"]

log = get_logger(__name__)

_VERSION = re.compile(r"^lake-(\d+)$")


def lake_versions(lake: LakePublisher, tables: list[str], limit: int = 50) -> list[dict[str, Any]]:
    """The lake's data snapshots, newest first: version, time, rows per table,
    and which one the manifest names (`current`)."""
    current = lake.manifests.current()
    current_id = current.lake.snapshot_id if current and current.lake else None
    if current is not None and current.tables:
        tables = sorted(current.tables)  # the lake's names (TABLES_TO_SYNC may qualify them)
    answer = run_lake(lake.config, "snapshots", {"tables": tables, "limit": limit})
    return [
        {
            "version": lake_version(s["snapshot_id"]),
            "snapshot_id": s["snapshot_id"],
            "current": s["snapshot_id"] == current_id,
            "created_at": s["time"],
            "rows": s["rows"],
            "message": s["message"],
        }
        for s in answer["snapshots"]
    ]


def lake_status(lake: LakePublisher) -> dict[str, Any]:
    """What `status` shows in lake mode: the version the manifest names, and
    the lake's newest data snapshot (newer: a commit whose manifest was never
    written, e.g. the ETL died in between; the next cycle publishes it).
    Best effort: an unreachable store or catalog is reported, not raised."""
    doc: dict[str, Any] = {"publish_mode": "lake"}
    try:
        current = lake.manifests.current()
        if current is not None and current.lake is not None:
            doc |= {
                "version": current.version,
                "snapshot_id": current.lake.snapshot_id,
                "created_at": current.created_at.isoformat(),
                "age_seconds": round(current.age_seconds, 1),
                "rolled_back_from": current.rolled_back_from,
            }
        newest = run_lake(lake.config, "snapshots", {"limit": 1, "rows": False})["snapshots"]
        doc["lake_newest_snapshot_id"] = newest[0]["snapshot_id"] if newest else None
        doc["unpublished_snapshots"] = bool(
            newest and newest[0]["snapshot_id"] > doc.get("snapshot_id", -1)
        )
    except Exception as exc:  # status must print whatever else it knows
        doc["error"] = f"{type(exc).__name__}: {exc}"
    return doc


def _table_infos(
    lake: LakePublisher, snapshot_id: int, tables: list[str], workdir: Path
) -> tuple[dict[str, TableInfo], dict[str, str], dict[str, ModelInfo]]:
    """Row counts, columns and checksums of the lake's tables at `snapshot_id`,
    read back through the lake (what a replica of it must hold), and the
    models its definitions build over them (what an API host will serve)."""
    infos, checksums = {}, {}
    con = duckdb.connect()
    try:
        for name in tables:
            path = workdir / f"{name}.parquet"
            run_lake(
                lake.config,
                "export",
                {"table": name, "path": str(path), "snapshot_id": snapshot_id},
            )
            con.execute(f"CREATE TABLE \"{name}\" AS FROM read_parquet('{path}')")
            checksums[name] = table_checksum(con, name)
            if name == MODELS_TABLE:
                continue  # the models' definitions: not a table users read
            columns = con.execute(f'DESCRIBE "{name}"').fetchall()
            infos[name] = TableInfo(
                row_count=int(con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0]),
                columns=[ColumnSchema(name=str(c[0]), type=str(c[1])) for c in columns],
            )
        models = model_infos(con, build_models(con, lake_version(snapshot_id)))
    finally:
        con.close()
    return infos, checksums, models


def lake_rollback(
    lake: LakePublisher, warehouse: Warehouse, version: str, workdir: Path
) -> Manifest:
    """Make the data of lake snapshot `version` current again, as a new snapshot."""
    match = _VERSION.match(version)
    if match is None:
        raise RollbackError(
            f"{version!r} is not a lake version (lake-<snapshot id>; see `analytics-etl versions`)"
        )
    target = int(match.group(1))
    current, etag = lake.manifests.read_current()
    if current is None or current.lake is None:
        raise RollbackError("nothing is published in lake mode yet: nothing to roll back")
    if current.version == version:
        return current
    tables = sorted(current.lake.primary_keys)
    request = {
        "snapshot_id": target,
        "tables": tables,
        # A version from before the lake carried models had none.
        "empty_if_absent": [MODELS_TABLE],
    }
    try:
        restored = int(run_lake(lake.config, "restore", request)["snapshot_id"])
    except LakeError as exc:
        raise RollbackError(f"version {version}: {exc}") from None
    # From here the lake holds the old data: whatever fails below, the next
    # cycle's commit replaces the restored tables and definitions.
    warehouse.mark_full([t for t in tables if t != MODELS_TABLE])
    lake.forget_sent_models()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="rollback-") as tmp:
        infos, checksums, models = _table_infos(lake, restored, tables, Path(tmp))
    away_from = current.rolled_back_from or current.version
    manifest = lake.manifest_for(
        restored, infos, checksums, current.lake.primary_keys, current, models
    ).model_copy(update={"rolled_back_from": away_from})
    lake.manifests.commit(manifest, etag)
    log.info("rolled_back", version=version, as_version=manifest.version, by="operator")
    return manifest
