"""Freshness lag: from a row changing in the source to the API answering with it.

    .venv/bin/python -m benchmarks.freshness [--samples 30] [--interval 2] [--poll 0.5]
    .venv/bin/python -m benchmarks.freshness --mode lake --rows 10000000 --changed 1000

Runs the whole path as users run it: a PostgreSQL source (a fresh database on
TEST_DATABASE_URL: the demo data, or with --rows a random `inventory` of that
many rows, testsupport/random_source.py), `analytics-etl run` with
SYNC_INTERVAL_SECONDS = --interval and PUBLISH_MODE = --mode, a SeaweedFS S3
store (or --store local: a folder), and the API under Gunicorn (2 workers)
polling the manifest every --poll seconds (in lake mode its replicator
advances the host's replica). Each sample waits a random fraction of the
interval (so changes land anywhere in the ETL's cycle), updates one inventory
row (with --changed N, N - 1 random rows besides, just before), and
polls the API every 0.1 s until the new value comes back. Prints p50/p95/max
and p95 against the target (sync interval + 5 s), and each process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

from api_service.dev.issuer import DevIssuer
from etl_service.demo_source import create_demo_source
from testsupport.api_server import ApiServer
from testsupport.memory_load import children, process_rss
from testsupport.processes import stop_process
from testsupport.random_source import change_rows, create_random_inventory
from testsupport.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS

BIN = Path(sys.executable).parent
AUDIENCE = "https://analytics-api.bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class PeakRss:
    """The largest resident size each kind of process reached (sampled every
    0.2 s over the process trees, each process's own high-water mark)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.roots: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, role: str, pid: int) -> None:
        self.roots[role] = pid
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        return {k: round(v / 2**20, 1) for k, v in sorted(self.peaks.items())}

    @staticmethod
    def _kind(pid: int, root: int) -> str:
        try:
            text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return "gone"
        if "analytics_lake" in text:
            return "lake process"
        if "replicate" in text:
            return "replicator"
        return "main" if pid == root else "worker"

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for role, root in list(self.roots.items()):
                todo = [root]
                while todo:
                    pid = todo.pop()
                    todo += children(pid)
                    kind = self._kind(pid, root)
                    if kind != "gone":
                        key = f"{role} {kind}"
                        self.peaks[key] = max(self.peaks.get(key, 0), process_rss(pid, "VmHWM"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--interval", type=float, default=2.0, help="SYNC_INTERVAL_SECONDS")
    parser.add_argument("--poll", type=float, default=0.5, help="SNAPSHOT_POLL_SECONDS")
    parser.add_argument("--store", choices=("s3", "local"), default="s3")
    parser.add_argument("--mode", choices=("file", "lake"), default="file", help="PUBLISH_MODE")
    parser.add_argument("--rows", type=int, default=0, help="a random inventory of N rows")
    parser.add_argument("--changed", type=int, default=1, help="rows changed per sample")
    parser.add_argument(
        "--etl-memory-limit", default="512MB", help="MEMORY_LIMIT of the ETL (as deployed)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()

    admin_url = sa.make_url(args.database_url).set(drivername="postgresql+psycopg")
    db_name = f"bench_fresh_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    source_url = admin_url.set(database=db_name).render_as_string(hide_password=False)

    work = Path(tempfile.mkdtemp(prefix="freshness-"))
    weed: SeaweedFS | None = None
    etl: subprocess.Popen[bytes] | None = None
    api: ApiServer | None = None
    issuer = DevIssuer(audience=AUDIENCE).start()
    if args.rows:
        create_random_inventory(source_url, args.rows)
        source = sa.create_engine(admin_url.set(database=db_name))
    else:
        source = create_demo_source(source_url)
    peaks = PeakRss()
    lags: list[float] = []
    try:
        env = {
            "SOURCE_URL": source_url,
            "DATA_DIR": str(work / "var"),
            "SYNC_INTERVAL_SECONDS": f"{args.interval:g}",
            "SNAPSHOT_POLL_SECONDS": f"{args.poll:g}",
            "LOG_LEVEL": "WARNING",
            "ETL_METRICS_PORT": "0",
            "RATE_LIMIT_REQUESTS": "1000000000",
            "PUBLISH_MODE": args.mode,
            **issuer.settings_env(),
        }
        if args.rows:
            env["TABLES_TO_SYNC"] = "inventory"
        if args.mode == "lake":
            env |= {"DATABASE_URL": source_url, "LAKE_CATALOG_URL": source_url}
        if args.store == "s3":
            weed = SeaweedFS(work / "seaweedfs").start()
            bucket = weed.create_bucket()
            env |= {
                "STORAGE_URL": f"s3://{bucket}/analytics",
                "S3_ENDPOINT_URL": weed.endpoint_url,
                "S3_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            }
        else:
            env["STORAGE_URL"] = (work / "store").as_uri()
        (work / "var").mkdir()
        with (work / "etl.log").open("wb") as log:
            etl = subprocess.Popen(
                [str(BIN / "analytics-etl"), "run"],
                env={**os.environ, **env, "MEMORY_LIMIT": args.etl_memory_limit},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        peaks.watch("etl", etl.pid)
        api = ApiServer(env, workers=2, log_path=work / "api.log").start(ready_timeout=600)
        assert api.proc is not None
        peaks.watch("api", api.proc.pid)
        token = issuer.mint(sub="freshness-bench")
        client = httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        rng = random.Random(7)
        for i in range(args.samples):
            time.sleep(rng.uniform(0, args.interval))
            row_id, value = 1 + i, 1_000_000 + i
            if args.changed > 1:
                change_rows(source_url, updates=args.changed - 1)
            with source.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE inventory SET quantity = :q,"
                        " updated_at = now() AT TIME ZONE 'UTC' WHERE id = :id"
                    ),
                    {"q": value, "id": row_id},
                )
            changed = time.monotonic()
            deadline = changed + 120
            while True:
                r = client.get(
                    "/query", params={"q": f"SELECT quantity FROM inventory WHERE id = {row_id}"}
                )
                if r.status_code == 200 and r.json()["data"][0]["quantity"] == value:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"sample {i}: the change never arrived (see {work})")
                time.sleep(0.1)
            lags.append(time.monotonic() - changed)
            print(f"sample {i + 1:>3}/{args.samples}: {lags[-1]:6.2f} s", flush=True)
        client.close()
    finally:
        if api is not None:
            api.stop()
        if etl is not None:
            if etl.poll() is None:
                os.killpg(etl.pid, signal.SIGTERM)
            stop_process(etl, timeout=30)
        if weed is not None:
            weed.stop()
        issuer.stop()
        source.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()

    rss = peaks.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept only when a sample failed (SystemExit)
    target = args.interval + 5
    p50, p95 = statistics.median(lags), percentile(lags, 0.95)
    summary = {
        "samples": len(lags),
        "store": args.store,
        "sync_interval_s": args.interval,
        "poll_s": args.poll,
        "p50_s": round(p50, 2),
        "p95_s": round(p95, 2),
        "max_s": round(max(lags), 2),
        "target_p95_s": target,
        "p95_over_target": round(p95 / target, 2),
        "mode": args.mode,
        "rows": args.rows or "demo",
        "changed_per_sample": args.changed,
        "peak_rss_mb": rss,
    }
    print(json.dumps(summary))
    return 0 if p95 <= target else 1


if __name__ == "__main__":
    sys.exit(main())
