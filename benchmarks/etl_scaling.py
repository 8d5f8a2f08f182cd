"""How the ETL's cost grows with the data, at the 512 MB target.

For each size (default 1M, 5M and 10M rows) a random `inventory` table
(testsupport/random_source.py: 9 columns of random values) is built in
PostgreSQL once, then, in this order:

- full load: `analytics-etl sync` (load, export, zstd, publish) in a fresh
  512 MiB memory cgroup: wall time, the process's peak RSS and anonymous
  (private) memory, the cgroup's OOM kills;
- the snapshot: its size on disk and compressed in the store;
- the API's side: a `SnapshotManager` downloads, verifies (sha256), opens and
  swaps in the new version: its time;
- an incremental cycle with 1,000 changed rows, end to end (`analytics-etl
  sync`: read the delta, merge, export, compress, publish), and the API's
  swap of that version.

Run: .venv/bin/python -m benchmarks.etl_scaling [--rows 1000000 --rows 5000000 ...]
Needs root (memory cgroups) and PostgreSQL at TEST_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analytics_shared.logging_config import configure_logging
from analytics_shared.memory_limit import format_size
from analytics_shared.object_store import LocalObjectStore
from api_service.data.snapshots import SnapshotManager
from testsupport.cgroup import MemoryCgroup
from testsupport.memory_load import process_rss
from testsupport.random_source import change_rows, random_source_database

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ETL = str(Path(sys.executable).parent / "analytics-etl")
MIB = 2**20


def timed_sync(env: dict[str, str], limit: int) -> dict[str, float]:
    """One `analytics-etl sync` in a fresh cgroup: seconds, peak RSS/anon MiB, OOM kills."""
    peak_rss = peak_anon = 0
    with MemoryCgroup(limit) as cgroup:
        started = time.perf_counter()
        proc = cgroup.popen(
            [ETL, "sync"], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        while proc.poll() is None:
            peak_rss = max(peak_rss, process_rss(proc.pid))
            peak_anon = max(peak_anon, process_rss(proc.pid, "RssAnon"))
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        out, err = proc.communicate()
        usage = cgroup.usage()
    if proc.returncode != 0:
        raise RuntimeError(f"sync failed ({proc.returncode}): {err.decode()[-2000:]}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "seconds": seconds,
        "peak_rss_mib": peak_rss / MIB,
        "peak_anon_mib": peak_anon / MIB,
        "oom_kills": usage.oom_kills,
        "changed": report["rows"]["inventory"]["changed"],
    }


def timed_swap(store_root: Path, cache: Path) -> float:
    """Seconds for the API to download, verify, open and swap in the current version."""
    manager = SnapshotManager(
        LocalObjectStore(store_root), cache, memory_limit=format_size(128 * MIB)
    )
    try:
        started = time.perf_counter()
        if not manager.refresh():
            raise RuntimeError(f"refresh failed: {manager.last_refresh_error}")
        return time.perf_counter() - started
    finally:
        manager.close()


def measure(rows: int, limit: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="etl-scaling-"))
    try:
        with random_source_database(ADMIN_URL, rows) as url:
            env = {
                "SOURCE_URL": url,
                "DATABASE_URL": f"sqlite:///{work / 'state.db'}",
                "DATA_DIR": str(work / "data"),
                "STORAGE_URL": (work / "store").as_uri(),
                "TABLES_TO_SYNC": "inventory",
                "ETL_METRICS_PORT": "0",
                "SYNC_SETTLE_SECONDS": "0",
                "LOG_LEVEL": "WARNING",
            }
            full = timed_sync(env, limit)
            raw = (work / "data" / "outgoing" / "snapshot.db").stat().st_size
            stored = sum(p.stat().st_size for p in (work / "store" / "history").glob("*.zst"))
            swap_full = timed_swap(work / "store", work / "api-cache-1")
            change_rows(url, updates=1_000)
            incremental = timed_sync(env, limit)
            swap_incremental = timed_swap(work / "store", work / "api-cache-2")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "rows": rows,
        "full_seconds": full["seconds"],
        "full_peak_rss_mib": full["peak_rss_mib"],
        "full_peak_anon_mib": full["peak_anon_mib"],
        "snapshot_mib": raw / MIB,
        "stored_mib": stored / MIB,
        "api_swap_seconds": swap_full,
        "incremental_seconds": incremental["seconds"],
        "incremental_peak_rss_mib": incremental["peak_rss_mib"],
        "incremental_changed": incremental["changed"],
        "api_swap_incremental_seconds": swap_incremental,
        "oom_kills": full["oom_kills"] + incremental["oom_kills"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--limit-mib", type=int, default=512)
    args = parser.parse_args()
    configure_logging("WARNING", service="bench")
    sizes = args.rows or [1_000_000, 5_000_000, 10_000_000]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "| rows | full load s | peak RSS / anon MiB | snapshot MiB (zstd) | API swap s"
        " | 1,000-change cycle s | its peak RSS MiB | API swap s | OOM kills |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in sizes:
        r = measure(rows, args.limit_mib * MIB)
        print(
            f"| {rows:,} | {r['full_seconds']:.1f} | {r['full_peak_rss_mib']:.0f} /"
            f" {r['full_peak_anon_mib']:.0f} | {r['snapshot_mib']:.0f} ({r['stored_mib']:.0f})"
            f" | {r['api_swap_seconds']:.1f} | {r['incremental_seconds']:.1f}"
            f" | {r['incremental_peak_rss_mib']:.0f} | {r['api_swap_incremental_seconds']:.1f}"
            f" | {r['oom_kills']} |",
            flush=True,
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
