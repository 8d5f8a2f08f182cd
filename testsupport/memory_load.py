"""The API under a memory limit: a random snapshot, the server in a memory
cgroup, a bounded mixed load, and what every response turned out to be.

Shared by the 512 MB tests (tests/test_memory_fit.py) and the benchmark
(benchmarks/memory_fit.py), so both judge the same load the same way:

- `publish_random_inventory` publishes an `inventory` table of random values
  (8 columns: keys, text, decimals, timestamps; DuckDB's seeded `random()`,
  so sorts and compression meet realistic data, not counting patterns);
- `CgroupServer` runs `analytics-api serve` (or any command) inside a fresh
  `MemoryCgroup` and reports each process's resident memory;
- `run_mixed_load` sends point lookups, 10,000-row JSON pages, aggregates,
  500,000-row Arrow results, a full-table NDJSON export, 400,000-row sorted
  CSV exports and distinct queries (which fill the result cache) from several
  clients for a fixed time, and classifies every outcome: a 200, a clean
  error in the error shape (with its code), or a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx

from analytics_shared.object_store import LocalObjectStore
from testsupport.cgroup import CgroupUsage, MemoryCgroup
from testsupport.ports import free_port
from testsupport.processes import stop_process
from testsupport.publishing import publish_database

__all__ = [
    "CgroupServer",
    "LoadReport",
    "create_random_inventory",
    "process_pss",
    "process_rss",
    "publish_random_inventory",
    "run_mixed_load",
]

MIB = 2**20


def create_random_inventory(con: duckdb.DuckDBPyConnection, rows: int, seed: float = 0.42) -> None:
    """An `inventory` table of `rows` random rows in `con`."""
    con.execute(f"SELECT setseed({seed})")
    con.execute(
        f"""
        CREATE TABLE inventory AS
        SELECT row_number() OVER ()::INTEGER AS id,
               (random() * 50000)::INTEGER + 1 AS product_id,
               ['AMS-1','BER-2','NYC-1','SFO-3','SIN-1','LON-2','PAR-1']
                   [(random() * 6)::INTEGER + 1] AS warehouse,
               substr(md5(random()::VARCHAR), 1, 12) AS sku,
               (random() * 1000)::INTEGER AS quantity,
               (random() * 100000)::DECIMAL(12, 2) AS unit_cost,
               TIMESTAMP '2024-01-01' + to_microseconds((random() * 6.3e13)::BIGINT)
                   AS created_at,
               TIMESTAMP '2026-01-01' + to_microseconds((random() * 3.0e13)::BIGINT)
                   AS updated_at
        FROM range({rows})
        """
    )


def publish_random_inventory(work: Path, rows: int, seed: float = 0.42) -> Path:
    """Publish a random `inventory` of `rows` rows to a local folder store; its root."""
    store_root = work / "store"
    db = work / "random.duckdb"
    con = duckdb.connect(str(db))
    try:
        create_random_inventory(con, rows, seed)
        con.execute("CHECKPOINT")
        publish_database(con, LocalObjectStore(store_root), work / "export")
    finally:
        con.close()
    db.unlink(missing_ok=True)
    return store_root


def process_rss(pid: int, field: str = "VmRSS") -> int:
    """Resident bytes of one process (0 when it is gone); `RssAnon` for its
    private heap only (shared libraries' pages are charged to whoever read them first)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_pss(pid: int) -> int:
    """Proportional set size: shared pages split among the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """Children of every thread of `pid` (a process may start them from any thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


class CgroupServer:
    """`analytics-api serve` (by default) in its own memory cgroup."""

    def __init__(
        self,
        env: dict[str, str],
        limit_bytes: int,
        log_path: Path,
        argv: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "API_BIND": f"127.0.0.1:{self.port}"}
        self.cgroup = MemoryCgroup(limit_bytes)
        self.log_path = log_path
        self.argv = argv or [str(Path(sys.executable).parent / "analytics-api"), "serve"]
        self.proc: object = None

    def __enter__(self) -> CgroupServer:
        self.cgroup.__enter__()
        with self.log_path.open("ab") as out:
            self.proc = self.cgroup.popen(
                self.argv, env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15, group=True)  # type: ignore[arg-type]
        self.cgroup.__exit__(*exc)

    @property
    def pid(self) -> int:
        return self.proc.pid  # type: ignore[attr-defined]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # type: ignore[attr-defined]
                raise RuntimeError(f"the server exited; log: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"not ready after {timeout}s; log: {self.log_path.read_text()[-3000:]}")

    def processes(self) -> dict[str, int]:
        """{"master": pid, "worker 1": pid, ...}: the server's process tree."""
        out = {"master": self.pid}
        for i, child in enumerate(sorted(children(self.pid)), 1):
            out[f"worker {i}"] = child
        return out

    def rss(self) -> dict[str, tuple[int, int, int]]:
        """(RSS, PSS, anonymous RSS) bytes per process of the tree."""
        tree = self.processes().items()
        return {
            name: (process_rss(pid), process_pss(pid), process_rss(pid, "RssAnon"))
            for name, pid in tree
        }

    def current_bytes(self) -> int:
        """What the cgroup is charged now (RSS + page cache of the tree)."""
        name = (
            "memory.current"
            if (self.cgroup.path / "memory.current").exists()
            else ("memory.usage_in_bytes")
        )
        try:
            return int((self.cgroup.path / name).read_text())
        except (OSError, ValueError):
            return 0

    def usage(self) -> CgroupUsage:
        return self.cgroup.usage()


# -- the mixed load -------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    name: str
    weight: int
    format: str
    sql: Callable[[random.Random, int], str]


def _point(rng: random.Random, rows: int) -> str:
    return f"SELECT * FROM inventory WHERE id = {rng.randrange(1, rows + 1)}"


def _page(rng: random.Random, rows: int) -> str:
    lo = rng.randrange(1, rows - 10_000)
    return f"SELECT * FROM inventory WHERE id BETWEEN {lo} AND {lo + 9_999} ORDER BY id"


def _aggregate(rng: random.Random, rows: int) -> str:
    # A new literal each time: distinct queries fill the result cache.
    return (
        "SELECT warehouse, count(*) AS items, sum(quantity) AS units, avg(unit_cost) AS cost"
        f" FROM inventory WHERE quantity >= {rng.randrange(0, 1000)}"
        " GROUP BY warehouse ORDER BY warehouse"
    )


def _arrow_500k(rng: random.Random, rows: int) -> str:
    lo = rng.randrange(1, max(2, rows - 500_000))
    return (
        f"SELECT * FROM inventory WHERE id BETWEEN {lo} AND {lo + 499_999} ORDER BY updated_at DESC"
    )


def _full_export(rng: random.Random, rows: int) -> str:
    return "SELECT * FROM inventory"


def _sorted_csv_400k(rng: random.Random, rows: int) -> str:
    lo = rng.randrange(1, max(2, rows - 400_000))
    return (
        f"SELECT * FROM inventory WHERE id BETWEEN {lo} AND {lo + 399_999}"
        " ORDER BY unit_cost DESC, id"
    )


def _distinct_skus(rng: random.Random, rows: int) -> str:
    return (
        "SELECT sku, quantity, unit_cost FROM inventory"
        f" WHERE product_id = {rng.randrange(1, 50_001)} ORDER BY sku"
    )


SHAPES = (
    Shape("point", 30, "json", _point),
    Shape("page_10k_json", 12, "json", _page),
    Shape("aggregate", 12, "json", _aggregate),
    Shape("distinct", 12, "json", _distinct_skus),
    Shape("arrow_500k", 6, "arrow", _arrow_500k),
    Shape("parquet_page", 3, "parquet", _page),
    Shape("sorted_csv_400k", 3, "csv", _sorted_csv_400k),
    Shape("full_ndjson_export", 1, "ndjson", _full_export),
)


@dataclass
class LoadReport:
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "503 busy", "dropped ..."
    by_shape: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)  # responses that are neither 200 nor clean
    # Why the clean refusals were refused: "shape status code: message head".
    reasons: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def dropped(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k.startswith("dropped"))

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {n}" for k, n in sorted(self.outcomes.items()))
        return f"{self.requests} requests in {self.seconds:.0f} s ({parts})"


def _clean_error(status: int, body: bytes, headers: httpx.Headers) -> tuple[str, str] | None:
    """(code, message) when the body is the error shape, else None."""
    import orjson

    try:
        doc = orjson.loads(body)
        error = doc["error"]
        ok = doc["success"] is False and {"code", "message", "request_id"} <= set(error)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not ok:
        return None
    if status == 503 and "retry-after" not in headers:
        return None
    return str(error["code"]), str(error["message"])


async def _one(
    client: httpx.AsyncClient, shape: Shape, sql: str, report: LoadReport, slow: bool
) -> None:
    params = {"q": sql, "format": shape.format}
    started = time.perf_counter()
    size = 0
    try:
        async with client.stream("GET", "/query", params=params) as response:
            status = response.status_code
            if status != 200:
                body = await response.aread()
                size = len(body)
                error = _clean_error(status, body, response.headers)
                if not (400 <= status < 500 or status == 503):
                    key = f"{status} unexpected"
                else:
                    key = f"{status} {error[0]}" if error else f"{status} unclean"
                if error:
                    report.reasons[f"{shape.name} {key}: {error[1][:60]}"] += 1
            else:
                async for chunk in response.aiter_raw(65_536):
                    size += len(chunk)
                    if slow:  # a slow reader: the server must keep its buffer bounded
                        await asyncio.sleep(0.002)
                key = "200"
    except httpx.TransportError as exc:
        key = f"dropped {type(exc).__name__}"
    report.outcomes[key] += 1
    report.by_shape[f"{shape.name} {key}"] += 1
    report.bytes += size
    report.latencies.setdefault(shape.name, []).append(time.perf_counter() - started)
    if key.startswith("dropped") or key.endswith(("unclean", "unexpected")):
        report.bad.append(f"{shape.name}: {key}")


async def _client_loop(
    url: str,
    token: str,
    rows: int,
    deadline: float,
    seed: int,
    report: LoadReport,
    slow: bool,
) -> None:
    rng = random.Random(seed)
    weights = [s.weight for s in SHAPES]
    headers = {"Authorization": f"Bearer {token}"}
    if seed % 2:
        headers["Accept-Encoding"] = "identity"
    timeout = httpx.Timeout(120.0, connect=10.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as client:
        while time.monotonic() < deadline:
            shape = rng.choices(SHAPES, weights)[0]
            await _one(client, shape, shape.sql(rng, rows), report, slow)


async def _load(url: str, token: str, rows: int, duration: float, clients: int) -> LoadReport:
    report = LoadReport()
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(
        *(
            _client_loop(url, token, rows, deadline, seed, report, slow=seed == 0)
            for seed in range(clients)
        )
    )
    report.seconds = time.monotonic() - started
    return report


def run_mixed_load(
    url: str, token: str, *, rows: int, duration: float, clients: int = 8
) -> LoadReport:
    """`clients` closed-loop clients for `duration` seconds (requests in flight
    then finish); client 0 reads slowly."""
    return asyncio.run(_load(url, token, rows, duration, clients))


__all__ += ["MIB", "SHAPES"]
