"""Published versions: listing them, and rolling back to an older one.

A rollback writes `current/manifest.json` again with an older version's own
manifest (kept beside its snapshot in `history/`), after downloading that
snapshot and verifying it exactly as the API will: size, sha256, and a
read-only open whose row counts match the manifest. The API treats any
version other than the one it serves as new, so it swaps within one poll.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import duckdb

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import Manifest, ManifestError
from analytics_shared.object_store import ObjectNotFound
from analytics_shared.snapshot_file import SnapshotFileError, probe
from etl_service.errors import RollbackError
from etl_service.publisher import PublishedVersion, Publisher
from etl_service.settings import EtlSettings

__all__ = ["RollbackError", "cmd_versions", "probe_snapshot", "rollback"]

log = get_logger(__name__)


def probe_snapshot(path: Path, manifest: Manifest) -> None:
    """Open read-only and check every table's row count against the manifest."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        probe(con, manifest)
    finally:
        con.close()


def rollback(publisher: Publisher, version: str, workdir: Path) -> Manifest:
    """Make `version` current again; returns the manifest now current."""
    current, etag = publisher.read_current()
    if current is not None and current.version == version:
        return current
    try:
        target = publisher.sidecar(version)
    except ObjectNotFound:
        raise RollbackError(
            f"no published version {version!r} (see `analytics-etl versions`)"
        ) from None
    except ManifestError as exc:
        raise RollbackError(f"version {version}: {exc}") from None
    with tempfile.TemporaryDirectory(dir=workdir, prefix="rollback-") as tmp:
        try:
            plain = publisher.fetch_verified(target, Path(tmp))
            probe_snapshot(plain, target)
        except ObjectNotFound:
            raise RollbackError(f"version {version}: its snapshot is gone from the store") from None
        except (SnapshotFileError, duckdb.Error) as exc:
            raise RollbackError(f"version {version} failed verification: {exc}") from None
        # The newest data the operator moved away from: the ETL will not publish
        # that same data over the rollback (see Publisher.is_unchanged).
        away_from = None
        if current is not None:
            away_from = current.rolled_back_from or current.version
        manifest = target.model_copy(
            update={
                "previous_version": current.version if current else None,
                "rolled_back_from": None if away_from == version else away_from,
            }
        )
        publisher.commit(manifest, etag)
        log.info("rolled_back", version=version, previous=manifest.previous_version, by="operator")
        publisher.update_convenience_copy(plain)
    return manifest


def cmd_versions(settings: EtlSettings, args: argparse.Namespace) -> int:
    """The published versions, newest first: a table, or JSON (--json, or piped)."""
    as_json = args.json if getattr(args, "json", None) is not None else not sys.stdout.isatty()
    if settings.publish_mode == "lake":
        return _print_lake_versions(settings, as_json)
    publisher = Publisher.from_settings(settings)
    listed = publisher.versions()  # read everything before printing anything
    if as_json:
        print(json.dumps([_version_doc(v) for v in listed], indent=2))
        return 0
    print(f"store: {publisher.store.url}")
    print(f"  {'VERSION':<24} {'CREATED_AT':<26} {'SIZE':>12} {'COMP':<5} ROWS")
    for v in listed:
        marker = "*" if v.current else " "
        m = v.manifest
        if m is None:
            note = "(no manifest)" if v.sidecar is None else "(manifest unreadable)"
            size = v.snapshot.size if v.snapshot else 0
            print(f"{marker} {v.version:<24} {'-':<26} {size:>12} {'-':<5} {note}")
            continue
        rows = sum(t.row_count for t in m.tables.values())
        missing = "" if v.snapshot is not None else " (snapshot deleted)"
        print(
            f"{marker} {v.version:<24} {m.created_at.isoformat(timespec='seconds'):<26}"
            f" {m.size:>12} {m.compression or 'none':<5} {rows}{missing}"
        )
    return 0


def _print_lake_versions(settings: EtlSettings, as_json: bool) -> int:
    from etl_service.lake_publisher import LakePublisher
    from etl_service.ops.lake_versions import lake_versions

    lake = LakePublisher.from_settings(settings, Publisher.from_settings(settings))
    listed = lake_versions(lake, list(settings.tables_to_sync))
    if as_json:
        print(json.dumps(listed, indent=2))
        return 0
    print(f"lake: {lake.config.data_path} (catalog schema {lake.config.metadata_schema})")
    print(f"  {'VERSION':<24} {'CREATED_AT':<26} {'ROWS':>12} NOTE")
    for v in listed:
        marker = "*" if v["current"] else " "
        counts = [n for n in v["rows"].values() if n is not None]
        print(
            f"{marker} {v['version']:<24} {(v['created_at'] or '-')[:25]:<26}"
            f" {sum(counts):>12} {v['message'] or ''}"
        )
    return 0


def _version_doc(v: PublishedVersion) -> dict[str, object]:
    m = v.manifest
    return {
        "version": v.version,
        "current": v.current,
        "created_at": m.created_at.isoformat() if m else None,
        "size": m.size if m else (v.snapshot.size if v.snapshot else None),
        "compression": m.compression if m else None,
        "rows": {name: t.row_count for name, t in m.tables.items()} if m else None,
        "snapshot_present": v.snapshot is not None,
        "manifest_readable": m is not None,
    }
