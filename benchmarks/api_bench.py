"""Serving benchmark: our API against the seed's design, on one snapshot.

    .venv/bin/python -m pip install -c constraints.txt -r benchmarks/requirements.txt
    .venv/bin/python -m benchmarks.api_bench [--duration 3] [--concurrency 1,16,64]
    .venv/bin/python -m benchmarks.api_bench --overhead-only   # ~1 minute

Builds a snapshot (2,000,000 inventory rows plus products, customers, orders,
transactions), publishes it to a local folder store, and serves it twice the
same way (Gunicorn, 2 Uvicorn workers, auth on, RS256 tokens from one local
issuer): our API (`analytics-api serve`, with the result cache on and then
off) and the seed-style baseline (benchmarks/baseline_api). The rate limit is
lifted for ours (RATE_LIMIT_REQUESTS=1e9; the baseline has none). One load
generator (benchmarks/api_loadgen.py) drives both at 1, 16 and 64 concurrent
clients for three query shapes; the servers run one at a time. It prints
requests/s, p50 and p99 per cell and the ratio ours/baseline, and the p50 of
the same queries run directly in DuckDB (our API's added overhead).

`--overhead-only` measures just that overhead: our API with the result cache
off, one client, each shape followed at once by the same queries run
directly in DuckDB (so both see the same machine load); it adds
`pk_range_100_same`, one fixed range query repeated (a dashboard's repeated
SQL, where the SQL guard's decision cache applies).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx

from analytics_shared.manifest import TableInfo
from analytics_shared.object_store import LocalObjectStore
from api_service.dev.issuer import DevIssuer
from benchmarks.api_loadgen import LoadResult, get_request, run_load
from etl_service.export import export_snapshot
from etl_service.publisher import Publisher
from testsupport.api_server import ApiServer
from testsupport.memory_load import CgroupServer
from testsupport.ports import free_port
from testsupport.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent
AUDIENCE = "https://analytics-api.bench"
INVENTORY_ROWS = 2_000_000


def _aggregate(rng: random.Random) -> str:
    return (
        "SELECT warehouse, count(*) AS items, sum(quantity) AS units, avg(quantity) AS mean"
        " FROM inventory GROUP BY warehouse ORDER BY warehouse"
    )


def _pk_range_100(rng: random.Random) -> str:
    lo = rng.randrange(1, INVENTORY_ROWS - 100)
    return f"SELECT * FROM inventory WHERE id BETWEEN {lo} AND {lo + 99}"


def _rows_10k(rng: random.Random) -> str:
    lo = rng.randrange(1, INVENTORY_ROWS - 10_000)
    return f"SELECT * FROM inventory WHERE id BETWEEN {lo} AND {lo + 9_999} ORDER BY id"


def _pk_range_100_same(rng: random.Random) -> str:
    return "SELECT * FROM inventory WHERE id BETWEEN 1000000 AND 1000099"


SHAPES: dict[str, Callable[[random.Random], str]] = {
    "aggregate": _aggregate,
    "pk_range_100": _pk_range_100,
    "rows_10k": _rows_10k,
}
OVERHEAD_SHAPES: dict[str, Callable[[random.Random], str]] = {
    **SHAPES,
    "pk_range_100_same": _pk_range_100_same,
}

BUILD_SQL = f"""
CREATE TABLE products AS SELECT i::INTEGER AS id, 'SKU-' || i AS sku, 'Product ' || i AS name,
  ['electronics','grocery','apparel','home','toys','sports'][i % 6 + 1] AS category,
  ((i * 37) % 50000 / 100.0)::DECIMAL(12,2) AS unit_price, i % 10 <> 0 AS active,
  TIMESTAMP '2026-01-01' + to_seconds(i * 60) AS created_at,
  TIMESTAMP '2026-01-01' + to_seconds(i * 60 + 30) AS updated_at
FROM range(1, 20001) t(i);
CREATE TABLE inventory AS SELECT i::INTEGER AS id, (i % 20000 + 1)::INTEGER AS product_id,
  ['AMS-1','BER-2','NYC-1','SFO-3','SIN-1'][i % 5 + 1] AS warehouse,
  (hash(i) % 1000)::INTEGER AS quantity, (hash(i * 7) % 50)::INTEGER AS reorder_level,
  TIMESTAMP '2026-01-01' + to_seconds((hash(i * 3) % 25000000)::BIGINT) AS created_at,
  TIMESTAMP '2026-01-01' + to_seconds((hash(i * 3) % 25000000)::BIGINT + 3600) AS updated_at
FROM range(1, {INVENTORY_ROWS + 1}) t(i) ORDER BY i;
CREATE TABLE customers AS SELECT i::INTEGER AS id, 'user' || i || '@example.com' AS email,
  'Customer ' || i AS full_name, ['NL','DE','US','GB','FR','SG','BR','JP'][i % 8 + 1] AS country,
  ['retail','business','vip'][i % 3 + 1] AS segment,
  TIMESTAMP '2026-01-01' + to_seconds(i * 13) AS created_at,
  TIMESTAMP '2026-01-01' + to_seconds(i * 13 + 5) AS updated_at
FROM range(1, 50001) t(i);
CREATE TABLE orders AS SELECT i::INTEGER AS id, (i % 50000 + 1)::INTEGER AS customer_id,
  ['pending','paid','shipped','delivered','cancelled'][i % 5 + 1] AS status,
  ((hash(i) % 100000) / 100.0)::DECIMAL(12,2) AS total_amount, 'EUR' AS currency,
  TIMESTAMP '2026-01-01' + to_seconds(i * 7) AS created_at,
  TIMESTAMP '2026-01-01' + to_seconds(i * 7 + 1) AS updated_at
FROM range(1, 200001) t(i);
CREATE TABLE transactions AS SELECT i::INTEGER AS id, (i % 200000 + 1)::INTEGER AS order_id,
  ((hash(i * 5) % 100000) / 100.0)::DECIMAL(12,2) AS amount,
  ['card','paypal','bank_transfer','gift_card'][i % 4 + 1] AS payment_method,
  ['ok','failed','refunded'][i % 3 + 1] AS status,
  TIMESTAMP '2026-01-01' + to_seconds(i * 5) AS created_at,
  TIMESTAMP '2026-01-01' + to_seconds(i * 5 + 1) AS updated_at
FROM range(1, 250001) t(i);
"""


def build_and_publish(work: Path) -> Path:
    """The snapshot file both servers read (ours via the store, verified)."""
    con = duckdb.connect(str(work / "working.duckdb"))
    try:
        con.execute(BUILD_SQL)
        con.execute("CHECKPOINT")
        snap = export_snapshot(con, work / "snapshot.db")
        tables = {
            name: TableInfo(row_count=count)
            for name, count in con.execute(
                "SELECT table_name, estimated_size FROM duckdb_tables()"
            ).fetchall()
        }
    finally:
        con.close()
    Publisher(LocalObjectStore(work / "store")).publish(snap, tables)
    return snap.path


class Baseline:
    def __init__(self, db: Path, auth: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **auth, "BASELINE_DB": str(db)}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Baseline:
        argv = [
            sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class",
            "uvicorn_worker.UvicornWorker", "--bind", f"127.0.0.1:{self.port}",
            "--no-control-socket", "benchmarks.baseline_api.app:app",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError(f"baseline did not start; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15, group=True)


@dataclass
class Cell:
    server: str
    shape: str
    fmt: str
    concurrency: int
    result: LoadResult


def measure(
    url: str,
    tokens: Sequence[str],
    shape: str,
    fmt: str | None,
    concurrency: int,
    duration: float,
) -> LoadResult:
    """Client n sends as user n (tokens[n % len(tokens)]): with one user, 64 clients
    would measure the per-user concurrency cap's 429s rather than serving."""
    rng = random.Random(1234)  # the same request sequence for every server
    make_sql = OVERHEAD_SHAPES[shape]

    def make(client: int) -> bytes:
        params = {"q": make_sql(rng)}
        if fmt:
            params["format"] = fmt
        headers = {
            "Authorization": f"Bearer {tokens[client % len(tokens)]}",
            "Accept-Encoding": "identity",
        }
        return get_request(url, "/query", params, headers)

    run_load(url, make, concurrency=concurrency, duration=0.5, max_requests=2_000)  # warm-up
    rng.seed(1234)
    return run_load(url, make, concurrency=concurrency, duration=duration, max_requests=50_000)


def direct_duckdb_times(
    db: Path, threads: int, make: Callable[[random.Random], str], runs: int = 120
) -> list[float]:
    """One shape's queries straight in DuckDB (execute + Arrow fetch), one at a time, in ms;
    the first 20 are warm-up and not returned."""
    con = duckdb.connect(str(db), read_only=True, config={"threads": threads})
    rng = random.Random(99)
    times = []
    try:
        for _ in range(runs):
            sql = make(rng)
            started = time.perf_counter()
            con.cursor().sql(sql).to_arrow_table()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        con.close()
    return times[20:]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def direct_duckdb_p50(db: Path, threads: int) -> dict[str, float]:
    return {
        shape: _median(direct_duckdb_times(db, threads, make)) for shape, make in SHAPES.items()
    }


def overhead_only(
    work: Path, db: Path, auth: dict[str, str], token: str, duration: float, rounds: int
) -> dict[str, object]:
    """Our API (cache off, 1 client) against DuckDB direct. Each round runs every
    shape through the API and then directly, back to back, so slow phases of a
    shared machine hit both; the p50s pool all rounds."""
    env = {
        **auth,
        "STORAGE_URL": (work / "store").resolve().as_uri(),
        "DATA_DIR": str(work / "data-overhead"),
        "RATE_LIMIT_REQUESTS": "1000000000",
        "RESULT_CACHE_BYTES": "0",
        "LOG_LEVEL": "WARNING",
    }
    threads = max(1, (os.cpu_count() or 2) // 2)
    cases = [(shape, "json", None) for shape in OVERHEAD_SHAPES] + [("rows_10k", "arrow", "arrow")]
    api_ms: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    direct_ms: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    errors = [0] * len(cases)
    load_before = os.getloadavg()
    api = ApiServer(env, workers=2, log_path=work / "overhead.log").start(ready_timeout=120)
    try:
        for round_ in range(rounds):
            for i, (shape, _label, fmt) in enumerate(cases):
                result = measure(api.url, [token], shape, fmt, 1, duration / rounds)
                api_ms[i] += result.latencies_ms
                errors[i] += result.errors
                direct_ms[i] += direct_duckdb_times(db, threads, OVERHEAD_SHAPES[shape])
            print(f"round {round_ + 1}/{rounds} done", flush=True)
    finally:
        api.stop()
    load_after = os.getloadavg()
    rows = []
    for i, (shape, label, _fmt) in enumerate(cases):
        direct, api_p50 = _median(direct_ms[i]), _median(api_ms[i])
        rows.append(
            {
                "shape": shape,
                "format": label,
                "direct_p50_ms": direct,
                "api_p50_ms": api_p50,
                "overhead_ms": api_p50 - direct,
                "requests": len(api_ms[i]),
                "errors": errors[i],
            }
        )
    print("\n| shape | format | DuckDB direct | API | overhead |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['format']} | {r['direct_p50_ms']:.2f} ms"
            f" | {r['api_p50_ms']:.2f} ms | {r['overhead_ms']:+.2f} ms |"
        )
    print(
        f"\n{sum(len(v) for v in api_ms.values())} API requests, {sum(errors)} errors;"
        f" load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)},"
        f" after {'/'.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} CPUs"
    )
    return {"overhead": rows, "load_before": load_before, "load_after": load_after}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell (default 3)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--rounds", type=int, default=3, help="--overhead-only: interleaved rounds (default 3)"
    )
    parser.add_argument(
        "--memory-limit-mib",
        type=int,
        action="append",
        default=[],
        help="also run ours with the default settings in a memory cgroup of this many MiB"
        " (repeatable; needs root): `ours@512MiB` rows and their ratios",
    )
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="only the API's added latency over DuckDB (1 client, cache off)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp, DevIssuer(AUDIENCE) as issuer:
        work = Path(tmp)
        started = time.perf_counter()
        db = build_and_publish(work)
        print(f"snapshot built and published in {time.perf_counter() - started:.1f} s "
              f"({db.stat().st_size / 1e6:.0f} MB)", flush=True)  # fmt: skip
        auth = issuer.settings_env()
        token = issuer.mint(sub="bench", ttl=7200)
        tokens = [issuer.mint(sub=f"bench-{n}", ttl=7200) for n in range(max(levels))]
        if args.overhead_only:
            numbers = overhead_only(work, db, auth, token, args.duration, args.rounds)
            if args.json:
                args.json.write_text(json.dumps(numbers, indent=2))
            return 0

        def run_server(name: str, url: str, formats: list[tuple[str, str | None]]) -> None:
            for shape in SHAPES:
                for label, fmt in formats:
                    if fmt == "arrow" and shape != "rows_10k":
                        continue
                    for c in levels:
                        result = measure(url, tokens, shape, fmt, c, args.duration)
                        cells.append(Cell(name, shape, label, c, result))
                        print(
                            f"{name:<14} {shape:<13} {label:<6} c={c:<3}"
                            f" {result.rps:8.1f} req/s  p50 {result.percentile(50):7.2f} ms"
                            f"  p99 {result.percentile(99):8.2f} ms  errors {result.errors}",
                            flush=True,
                        )

        baseline = Baseline(db, auth, work / "baseline.log").start()
        try:
            run_server("baseline", baseline.url, [("json", None)])
        finally:
            baseline.stop()
        for name, cache_bytes in (("ours", "100000000"), ("ours-nocache", "0")):
            env = {
                **auth,
                "STORAGE_URL": (work / "store").resolve().as_uri(),
                "DATA_DIR": str(work / f"data-{name}"),
                "RATE_LIMIT_REQUESTS": "1000000000",
                "RESULT_CACHE_BYTES": cache_bytes,
                "LOG_LEVEL": "WARNING",
            }
            api = ApiServer(env, workers=2, log_path=work / f"{name}.log").start(ready_timeout=120)
            try:
                run_server(name, api.url, [("json", None), ("arrow", "arrow")])
            finally:
                api.stop()
        for limit in args.memory_limit_mib:
            # The defaults as deployed: workers, DuckDB memory and cache from the budget.
            name = f"ours@{limit}MiB"
            env = {
                **auth,
                "STORAGE_URL": (work / "store").resolve().as_uri(),
                "DATA_DIR": str(work / f"data-{limit}"),
                "RATE_LIMIT_REQUESTS": "1000000000",
                "LOG_LEVEL": "WARNING",
            }
            with CgroupServer(env, limit * 2**20, work / f"{name}.log") as limited:
                limited.wait_ready(timeout=180)
                run_server(name, limited.url, [("json", None), ("arrow", "arrow")])
                usage = limited.usage()
            print(f"{name}: {usage.oom_kills} OOM kills, cgroup peak {usage.peak_mb:.0f} MiB")
        direct = direct_duckdb_p50(db, threads=max(1, (os.cpu_count() or 2) // 2))

    print_report(cells, direct, levels)
    print_limited(cells, args.memory_limit_mib, levels)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cells": [
                        {
                            "server": c.server,
                            "shape": c.shape,
                            "format": c.fmt,
                            "concurrency": c.concurrency,
                            "rps": c.result.rps,
                            "p50_ms": c.result.percentile(50),
                            "p99_ms": c.result.percentile(99),
                            "requests": c.result.requests,
                            "errors": c.result.errors,
                        }
                        for c in cells
                    ],
                    "direct_duckdb_p50_ms": direct,
                },
                indent=2,
            )
        )
    return 0


def print_limited(cells: list[Cell], limits: list[int], levels: list[int]) -> None:
    """Requests/s in memory cgroups, each against the baseline and unlimited ours."""
    if not limits:
        return

    def rps(server: str, shape: str, fmt: str, c: int) -> float | None:
        for cell in cells:
            if (cell.server, cell.shape, cell.fmt, cell.concurrency) == (server, shape, fmt, c):
                return cell.result.rps
        return None

    names = [f"ours@{limit}MiB" for limit in limits]
    print(
        "\n| shape | format | clients | baseline | ours |"
        + "".join(f" {n} | /baseline | /ours |" for n in names)
    )
    print("|---|---|---|---|---|" + "---|---|---|" * len(names))
    for shape in SHAPES:
        for fmt in ("json", "arrow"):
            for c in levels:
                base, ours = rps("baseline", shape, "json", c), rps("ours", shape, fmt, c)
                if base is None or ours is None:
                    continue
                row = f"| {shape} | {fmt} | {c} | {base:.0f} | {ours:.0f} |"
                for name in names:
                    limited = rps(name, shape, fmt, c) or 0.0
                    row += f" {limited:.0f} | {limited / base:.1f}x | {limited / ours:.2f} |"
                print(row)


def print_report(cells: list[Cell], direct: dict[str, float], levels: list[int]) -> None:
    def find(server: str, shape: str, fmt: str, c: int) -> LoadResult | None:
        for cell in cells:
            if (cell.server, cell.shape, cell.fmt, cell.concurrency) == (server, shape, fmt, c):
                return cell.result
        return None

    print(
        "\n| shape | format | clients | baseline req/s (p50/p99 ms) | ours req/s (p50/p99 ms)"
        " | ours/baseline | ours, cache off req/s (p50/p99 ms) | cache off/baseline |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        for fmt in ("json", "arrow"):
            for c in levels:
                base = find("baseline", shape, "json", c)
                ours = find("ours", shape, fmt, c)
                cold = find("ours-nocache", shape, fmt, c)
                if base is None or ours is None or cold is None:
                    continue

                def fmt_cell(r: LoadResult) -> str:
                    return f"{r.rps:.0f} ({r.percentile(50):.1f}/{r.percentile(99):.1f})"

                print(
                    f"| {shape} | {fmt} | {c} | {fmt_cell(base)} | {fmt_cell(ours)}"
                    f" | {ours.rps / base.rps:.1f}x | {fmt_cell(cold)}"
                    f" | {cold.rps / base.rps:.1f}x |"
                )
    print("\nAdded overhead at p50, 1 client, cache off (API p50 - direct DuckDB p50):")
    for shape, p50 in direct.items():
        for fmt in ("json", "arrow"):
            cold = find("ours-nocache", shape, fmt, 1)
            if cold is not None:
                api = cold.percentile(50)
                print(
                    f"  {shape:<13} {fmt:<6} direct {p50:6.2f} ms  API {api:6.2f} ms"
                    f"  overhead {api - p50:+6.2f} ms"
                )


if __name__ == "__main__":
    sys.exit(main())
