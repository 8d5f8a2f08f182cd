"""Peak memory per Arrow byte while a result is encoded: ENCODE_FACTOR, STREAM_FACTOR.

    .venv/bin/python -m benchmarks.encode_memory                  # 2, 5, 10 MiB, 3 runs each
    .venv/bin/python -m benchmarks.encode_memory --mib 4 --runs 5

A large buffered result holds an admission reservation of MAX_RESULT_BYTES x
ENCODE_FACTOR[format] (api_service/ops/memory_budget.py): its Arrow data as
DuckDB hands it over, the encoded body, and the br/gzip copy. A stream holds
STREAM_FIXED_BYTES + MAX_RESULT_BYTES x STREAM_FACTOR: one batch (at most
MAX_RESULT_BYTES of Arrow), its CSV/NDJSON chunk and the compressor. This
measures both.

One child process with a 512 MiB worker's settings (glibc thresholds from
malloc_tuning, DuckDB's memory_limit and flush threshold, work on a pool
thread) holds a random `inventory` (testsupport.memory_load) in DuckDB. Per
case it runs the query and the encoding once to warm up, frees what it can
(`gc.collect()`, Arrow's pool, `malloc_trim(0)`), reads the result again
through the executor's capped Arrow read (DuckDB's part: its own budget),
frees again, then encodes it with the API's own code: service._materialise
(JSON, Arrow IPC, Parquet, with br/gzip as the API compresses bodies) or one
stream batch (csv_batch / ndjson_batch and StreamCompressor). The parent
samples the child's anonymous RSS (/proc/<pid>/status RssAnon) every ~0.5 ms;
the factor is (the Arrow bytes + the encoding's peak over the level before it)
/ the Arrow bytes. Each cell is the largest of `--runs` runs: the budget must
hold the worst one.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MIB = 2**20
BUFFERED = (
    *((f, c) for f in ("json", "json_compact") for c in (None, "gzip", "br")),
    ("arrow", None),
    ("parquet", None),
)
STREAMED = tuple((f, c) for f in ("csv", "ndjson") for c in (None, "gzip", "br"))
TABLE_ROWS = 400_000  # ~27 MiB of Arrow: the largest case reads at most 10 MiB of it


def _anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the child: the worker's code, one case per command -------------------------
def _child() -> None:
    import duckdb
    import pyarrow as pa

    from api_service.data.snapshots import DUCKDB_FLUSH_THRESHOLD
    from api_service.http.responses import StreamCompressor
    from api_service.ops.malloc_tuning import retain_freed_memory
    from api_service.ops.memory_budget import RETAIN_PER_ARENA_TIGHT
    from api_service.query import encodings
    from api_service.query.encodings import FORMATS, Column
    from api_service.query.executor import QueryResult, _capped_table, _relation
    from api_service.query.service import PreparedQuery, _materialise
    from testsupport.memory_load import create_random_inventory

    retain_freed_memory(RETAIN_PER_ARENA_TIGHT)  # a 512 MiB worker's glibc settings
    con = duckdb.connect(
        config={
            "memory_limit": "72MB",
            "threads": 1,
            "allocator_flush_threshold": DUCKDB_FLUSH_THRESHOLD,
            "allocator_background_threads": True,
        }
    )
    create_random_inventory(con, TABLE_ROWS)
    row_bytes = con.sql("SELECT * FROM inventory LIMIT 10000").to_arrow_table().nbytes / 10_000
    pool = ThreadPoolExecutor(1, thread_name_prefix="query")
    trim = ctypes.CDLL(None).malloc_trim

    def fetch(mib: float) -> tuple[pa.Table, list[Column]]:
        rows = int(mib * MIB / row_bytes)
        relation, columns = _relation(con.cursor(), f"SELECT * FROM inventory LIMIT {rows}", None)
        return _capped_table(relation, rows), columns

    def encode(table: pa.Table, columns: list[Column], fmt: str, coding: str | None) -> int:
        if FORMATS[fmt].streamed:
            body = (
                encodings.csv_batch(table, columns, header=True)
                if fmt == "csv"
                else (encodings.ndjson_batch(table, columns))
            )
            if coding:
                compressor = StreamCompressor(coding)
                body = compressor.feed(body) + compressor.finish()
            return len(body)
        result = QueryResult(table, columns, False, "v1", 1.0)
        query = PreparedQuery("", None, FORMATS[fmt], coding, None)
        encoded, _ = _materialise(query, 0, lambda q, r: {})(result)
        return len(encoded)

    def release() -> None:
        gc.collect()
        pa.default_memory_pool().release_unused()
        trim(0)

    for line in sys.stdin:
        fmt, coding, mib = line.split()
        code = None if coding == "-" else coding
        warm = pool.submit(fetch, float(mib)).result()  # DuckDB's buffers, the heap's arenas
        pool.submit(encode, *warm, fmt, code).result()
        del warm
        release()
        print("ready", flush=True)
        sys.stdin.readline()  # the parent has read the level before the fetch
        table, columns = pool.submit(fetch, float(mib)).result()
        release()
        print("fetched", flush=True)
        sys.stdin.readline()  # ... and the level before the encoding
        body = pool.submit(encode, table, columns, fmt, code).result()
        print(f"done {table.nbytes} {body}", flush=True)
        del table, columns


# -- the parent: sampling ----------------------------------------------------------
class _Sampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _anon(self.pid))
            time.sleep(0.0005)

    def reset(self) -> int:
        self.peak = now = _anon(self.pid)
        return now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(sizes: list[float], runs: int) -> list[tuple[str, str, float, float, float, float]]:
    """(format, coding, MiB of Arrow, body MiB, peak MiB, factor) per case: the
    worst run. The peak is the encoding's, over the level with the Arrow table
    held; the factor counts the table once more: (Arrow + peak) / Arrow."""
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.encode_memory", "--child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    assert child.stdin is not None and child.stdout is not None
    sampler = _Sampler(child.pid)
    rows = []
    try:
        for fmt, coding in BUFFERED + STREAMED:
            for mib in sizes:
                worst: tuple[float, float, float, float] | None = None
                for _ in range(runs):
                    child.stdin.write(f"{fmt} {coding or '-'} {mib}\n")
                    child.stdin.flush()
                    assert child.stdout.readline().strip() == "ready"
                    base = sampler.reset()
                    child.stdin.write("go\n")
                    child.stdin.flush()
                    assert child.stdout.readline().strip() == "fetched"
                    fetched = sampler.peak - base
                    level = sampler.reset()
                    child.stdin.write("go\n")
                    child.stdin.flush()
                    _, arrow, body = child.stdout.readline().split()
                    peak = sampler.peak - level
                    factor = (int(arrow) + peak) / int(arrow)
                    print(f"  fetch peak {fetched / MIB:.1f} MiB", file=sys.stderr)
                    if worst is None or factor > worst[3]:
                        worst = (int(arrow) / MIB, int(body) / MIB, peak / MIB, factor)
                assert worst is not None
                rows.append((fmt, coding or "identity", *worst))
                print(
                    f"{fmt:8} {coding or 'identity':8} arrow {worst[0]:5.1f} MiB  body"
                    f" {worst[1]:6.1f} MiB  peak {worst[2]:6.1f} MiB  factor {worst[3]:.2f}",
                    flush=True,
                )
    finally:
        sampler.stop()
        child.stdin.close()
        child.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mib", type=float, action="append", help="MiB of Arrow data per case")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        _child()
        return
    with open("/proc/loadavg") as fh:
        print("load average:", " ".join(fh.read().split()[:3]))
    rows = measure(args.mib or [2, 5, 10], args.runs)
    print(
        "\n| format | coding | factor at "
        + " / ".join(f"{m:g}" for m in args.mib or [2, 5, 10])
        + " MiB |"
    )
    by_case: dict[tuple[str, str], list[float]] = {}
    for fmt, coding, _, _, _, factor in rows:
        by_case.setdefault((fmt, coding), []).append(factor)
    for (fmt, coding), factors in by_case.items():
        print(f"| {fmt} | {coding} | " + " / ".join(f"{f:.2f}" for f in factors) + " |")


if __name__ == "__main__":
    main()
