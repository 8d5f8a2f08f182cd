"""File mode vs lake mode: full load, then a 1,000-row cycle end to end.

    .venv/bin/python -m benchmarks.lake_cycle --rows 1000000

Builds a random 9-column `inventory` in a fresh PostgreSQL database once
(testsupport/random_source.py: ids, ints, a varchar(16), a numeric(12,2), an
md5 text, two timestamps: random values, which barely compress), then for
each mode: a full load (`analytics-etl sync` as a process in a fresh memory
cgroup of --memory-limit, the container's size, also given as MEMORY_LIMIT;
needs root: wall time, peak RSS and anonymous memory of the ETL and of its
lake process, the cgroup's peak and OOM kills), an API host's first copy, then 720 updates and 280
inserts in the source, one more cycle (measured the same way) and the API host's advance: time,
bytes uploaded to the store, bytes the host downloads. Ratios lake/file are
printed. The store is a local folder (bytes are counted the same way as S3
would receive them); the catalog is the same PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from analytics_shared.memory_limit import parse_size
from testsupport.cgroup import MemoryCgroup
from testsupport.memory_load import process_rss
from testsupport.random_source import change_rows, random_source_database

ROOT = Path(__file__).resolve().parents[1]
ETL = str(Path(sys.executable).parent / "analytics-etl")
ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _run(args: list[str], env: dict[str, str], limit: int) -> dict[str, Any]:
    """`analytics-etl <args>` in a fresh memory cgroup of `limit` bytes: seconds, the
    peak RSS and anonymous memory of the ETL and of its lake process (sampled every
    0.1 s, each process's own high-water mark), the cgroup's peak and OOM kills."""
    peaks = {"etl": 0, "etl_anon": 0, "lake": 0, "lake_anon": 0}
    with MemoryCgroup(limit) as cgroup:
        started = time.monotonic()
        proc = cgroup.popen(
            [ETL, *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out = bytearray()
        reader = threading.Thread(target=lambda: out.extend(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        while proc.poll() is None:
            for pid in cgroup.pids():
                role = "etl" if pid == proc.pid else "lake"
                peaks[role] = max(peaks[role], process_rss(pid, "VmHWM"))
                peaks[f"{role}_anon"] = max(peaks[f"{role}_anon"], process_rss(pid, "RssAnon"))
            time.sleep(0.1)
        seconds = time.monotonic() - started
        reader.join()
        usage = cgroup.usage()
    if proc.returncode:
        raise RuntimeError(out.decode(errors="replace")[-3000:])
    return {
        "seconds": seconds,
        **{f"{k}_peak_mb": v / 2**20 for k, v in peaks.items()},
        "cgroup_peak_mb": usage.peak_bytes / 2**20,
        "oom_kills": usage.oom_kills,
    }


def _files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _host(mode: str, env: dict[str, str], work: Path) -> Any:
    from analytics_shared.lake import LakeConfig
    from api_service.data.cache import SnapshotCache
    from api_service.data.lake_replica import LakeReplicator
    from api_service.settings import ApiSettings

    settings = ApiSettings(
        **{**env, "DATA_DIR": str(work / "api"), "AUTH0_DOMAIN": "bench.invalid"},
        AUTH0_API_AUDIENCE="bench",
    )
    store = settings.open_store()
    if mode == "lake":
        config = LakeConfig.from_settings(settings, env["DATABASE_URL"])
        return LakeReplicator(store, config, SnapshotCache(store, settings.cache_dir))
    return SnapshotCache(store, settings.cache_dir)


def _host_round(host: Any) -> tuple[float, int]:
    """(seconds, bytes downloaded) for the host to hold the current version."""
    from analytics_shared.manifest import MANIFEST_KEY, Manifest

    started = time.monotonic()
    if hasattr(host, "run_once"):
        host.run_once()
        return time.monotonic() - started, int(host.status["last_round_bytes"])
    manifest = Manifest.from_json(host.store.get_bytes(MANIFEST_KEY)[0])
    _, pin = host.fetch(manifest)
    pin.release()
    return time.monotonic() - started, manifest.size


def bench(rows: int, memory_limit: str) -> None:
    results: dict[str, dict[str, float]] = {}
    work_root = Path(tempfile.mkdtemp(prefix="lake-bench-"))
    started = time.monotonic()
    with random_source_database(ADMIN_URL, rows) as db_url:
        print(f"source: {rows:,} random rows in {time.monotonic() - started:.1f} s", flush=True)
        for round_no, mode in enumerate(("file", "lake")):
            work = work_root / mode
            env = {
                "SOURCE_URL": db_url,
                "DATABASE_URL": db_url,
                "DATA_DIR": str(work),
                "STORAGE_URL": (work / "store").resolve().as_uri(),
                "TABLES_TO_SYNC": "inventory",
                "PUBLISH_MODE": mode,
                "LAKE_METADATA_SCHEMA": f"lake_{round_no}",
                "SYNC_SETTLE_SECONDS": "0",
                "RECONCILE_INTERVAL_SECONDS": "86400",
                "LOG_JSON": "true",
                "ETL_METRICS_PORT": "0",
                "MEMORY_LIMIT": memory_limit,
            }
            limit = parse_size(memory_limit, "--memory-limit")
            full = _run(["sync"], env, limit)
            host = _host(mode, env, work)
            first_s, first_b = _host_round(host)
            before = _files(work / "store")
            change_rows(db_url, updates=720, inserts=280)
            cycle = _run(["sync"], env, limit)
            after = _files(work / "store")
            uploaded = sum(s for p, s in after.items() if before.get(p) != s)
            host_s, host_b = _host_round(host)
            results[mode] = {
                **{f"full_load_{k}": v for k, v in full.items()},
                "host_first_copy_s": first_s,
                "host_first_copy_mb": first_b / 1e6,
                **{f"cycle_{k}": v for k, v in cycle.items()},
                "uploaded_mb": uploaded / 1e6,
                "host_round_s": host_s,
                "host_downloaded_mb": host_b / 1e6,
                "end_to_end_s": cycle["seconds"] + host_s,
            }
            print(mode, json.dumps({k: round(v, 3) for k, v in results[mode].items()}), flush=True)
        print(f"\n{rows:,} rows          file      lake   lake/file")
        for key in results["file"]:
            f, lk = results["file"][key], results["lake"][key]
            ratio = f"{lk / f:8.3f}" if f else "       -"
            print(f"{key:28s} {f:9.3f} {lk:9.3f} {ratio}")
    shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-limit", default="512MB", help="MEMORY_LIMIT of the ETL")
    args = parser.parse_args()
    bench(args.rows, args.memory_limit)
