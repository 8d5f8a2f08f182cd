"""`check-config --probe` for both services: one line per dependency.

Each check returns where it reached (no secret) or raises; the line is
`<name>: ok: <where>` or `<name>: FAILED: <Type>: <reason> (check <settings>)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from analytics_shared.cli_edge import EXIT_FAILURE, one_line
from analytics_shared.manifest import MANIFEST_KEY
from analytics_shared.object_store import ObjectNotFound, ObjectStore

__all__ = ["LAKE_SETTINGS", "Probe", "probe_lake", "probe_store", "run_probes"]

LAKE_SETTINGS = "LAKE_CATALOG_URL, LAKE_METADATA_SCHEMA, LAKE_PYTHON, STORAGE_URL / S3_*"

# (dependency, the settings that name it, the check)
Probe = tuple[str, str, Callable[[], str]]


def probe_store(store: ObjectStore) -> str:
    """Read the current manifest: the store answers, with or without a version."""
    try:
        store.get_bytes(MANIFEST_KEY)
        return f"{store.url} (a version is published)"
    except ObjectNotFound:
        return f"{store.url} (nothing published yet)"


def probe_lake(settings: Any, catalog_url: str | None) -> str:
    """Start the lake process (LAKE_PYTHON) and read the lake's newest snapshot
    through its catalog, as the ETL and the replicator do."""
    from analytics_shared.lake import LakeConfig, LakeError, lake_process, run_lake

    config = LakeConfig.from_settings(settings, catalog_url)
    where = f"catalog schema {config.metadata_schema}, data at {config.data_path}"
    try:
        newest = run_lake(config, "snapshots", {"limit": 1, "rows": False})["snapshots"]
    except LakeError as exc:
        if "does not exist" not in str(exc):
            raise
        return f"{where} (no lake yet: the ETL's first cycle creates it)"
    finally:
        lake_process(config).close()
    shown = f"newest snapshot {newest[0]['snapshot_id']}" if newest else "no snapshot yet"
    return f"{where} ({shown})"


def run_probes(probes: Sequence[Probe]) -> int:
    """Print one line per dependency; 0 when all are reached, else EXIT_FAILURE."""
    failed = 0
    for name, settings, check in probes:
        try:
            print(f"{name}: ok: {check()}", flush=True)
        except Exception as exc:  # each dependency's reason, on its own line
            failed += 1
            reason = next(iter(str(getattr(exc, "orig", None) or exc).strip().splitlines()), "")
            print(
                one_line(f"{name}: FAILED: {type(exc).__name__}: {reason} (check {settings})"),
                flush=True,
            )
    return EXIT_FAILURE if failed else 0
