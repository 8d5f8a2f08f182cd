"""The API's memory budget: the container's limit split among its parts, once.

At start-up (the Gunicorn master to choose the worker count, each worker to
size itself) the limit the kernel will enforce (`analytics_shared.memory_limit`)
is divided:

    limit = headroom + master + reserve (what else runs in the container:
                                         an ETL, the lake replicator)
            + workers x (python + light work + malloc retained
                         + DuckDB + DuckDB untracked + heavy work + cache)

- python: a worker's own footprint with its libraries and a snapshot open,
  idle (measured: benchmarks/README.md, "Memory");
- light work: what each encode slot holds while it answers a result under
  LIGHT_RESULT_BYTES, which takes no reservation (at most `encode_slots`
  buffered results are encoded at once per worker, query/executor.py): the Arrow batches DuckDB
  hands over (malloc'd), the encoded body, a br/gzip copy (measured per
  10,000-row page, benchmarks/README.md "Where a worker's memory goes");
- malloc retained: freed heap glibc keeps per arena (ops/malloc_tuning.py);
- DuckDB: `memory_limit` of the worker's database (it spills sorts and
  joins to `temp_directory` beyond it);
- DuckDB untracked: what DuckDB holds past `memory_limit` (state outside its
  buffer manager, its allocator's caches): measured at DUCKDB_UNTRACKED_FRACTION
  of the limit plus DUCKDB_UNTRACKED_BYTES under concurrent sorts, with its
  allocator flushed early (data/snapshots.py, DUCKDB_FLUSH_THRESHOLD);
- heavy work: the admission budget (query/admission.py) for results past
  LIGHT_RESULT_BYTES and open streams: their Arrow data, encoded bodies and
  compression buffers. MAX_RESULT_BYTES follows from it;
- cache: the result cache (RESULT_CACHE_BYTES).

Explicit settings win (DUCKDB_MEMORY_LIMIT, RESULT_CACHE_BYTES,
MAX_RESULT_BYTES, WEB_CONCURRENCY); what is left is shared by the others. A
combination that cannot fit raises `ConfigurationError` naming the settings
to change. Pure arithmetic: no I/O, so the unit tests cover every case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from analytics_shared.errors import ConfigurationError
from analytics_shared.memory_limit import (
    MemoryLimit,
    explicit_settings,
    format_size,
    headroom,
    parse_size,
)

if TYPE_CHECKING:  # the Gunicorn master imports this module without the app's settings
    from api_service.settings import ApiSettings

__all__ = [
    "ENCODE_FACTOR",
    "LIGHT_RESULT_BYTES",
    "SHARED_DUCKDB_THREADS",
    "MemoryBudget",
    "apply_budget",
    "cpu_workers",
    "plan_budget",
    "plan_workers",
    "replicator_reserve",
    "stream_reservation",
]

MIB = 2**20
# Measured (benchmarks/memory_fit.py, idle, a 2M-row snapshot open): the
# Gunicorn master without the app, and a worker with it.
MASTER_BYTES = 40 * MIB
PYTHON_WORKER_BYTES = 150 * MIB
MIN_DUCKDB = 48 * MIB  # its memory_limit; the share adds what it holds past it
MIN_HEAVY = 24 * MIB
# Per query thread: a light (unreserved) result being encoded and compressed.
# Measured: a 10,000-row JSON page (0.7 MB of Arrow, 1.9 MB of JSON) peaks at
# 3-6 MiB identity or gzip, 8-19 MiB with br; under the mixed load the worker's
# malloc heap held 90-130 MiB past its idle size with 4 query threads.
LIGHT_WORK_BYTES = 12 * MIB
# DuckDB's resident memory past its memory_limit: measured 20-25 MiB over the
# limit with two 400,000-500,000-row sorts at once (117 MB and 76 MB limits).
DUCKDB_UNTRACKED_FRACTION = 0.10
DUCKDB_UNTRACKED_BYTES = 16 * MIB
# Buffered results encoded at once by a worker whose share is under 768 MiB
# (a larger one encodes on every query thread).
TIGHT_ENCODE_SLOTS = 4
# Sharing the container with the ETL (all-in-one): fewer at once, so the worker's
# light work still leaves DuckDB and large results their minimums at 512 MiB.
SHARED_ENCODE_SLOTS = 1
# ... and DuckDB runs one thread per query: a 500,000-row sort of the test's
# 8-column table needed 24 MB of memory_limit with 1 thread, 48 MB with 2, and
# failed below that even with temp_directory (benchmarks/README.md, "All-in-one").
SHARED_DUCKDB_THREADS = 1
# Two snapshot versions are open during a swap, each with half of DuckDB's
# share (main.py): each half must still hold one such sort.
MIN_DUCKDB_SHARED = 2 * 24 * MIB
# Below this DuckDB gets, a worker is not worth its footprint.
MIN_WORKER_BYTES = (
    PYTHON_WORKER_BYTES + TIGHT_ENCODE_SLOTS * LIGHT_WORK_BYTES + MIN_DUCKDB + MIN_HEAVY
)
# Freed heap glibc keeps per arena; a tight worker keeps less (malloc_tuning).
RETAIN_PER_ARENA = 16 * MIB
RETAIN_PER_ARENA_TIGHT = 2 * MIB
# A buffered result whose Arrow data passes this takes an admission
# reservation; smaller ones (a 10,000-row page of a narrow table) do not.
LIGHT_RESULT_BYTES = 2 * MIB
# Peak bytes per Arrow byte while a buffered result is encoded (the Arrow
# table, the per-column texts, the body, a compressed copy). Measured with
# benchmarks/encode_memory.py at 2, 5 and 10 MiB of Arrow data with identity,
# gzip and br: the largest of each format's cells (br's fixed cost makes its
# 2 MiB cells the largest; benchmarks/README.md, "Encoding memory").
ENCODE_FACTOR = {"json": 14.0, "json_compact": 11.5, "arrow": 5.0, "parquet": 8.0}
# A stream holds one batch (at most MAX_RESULT_BYTES of Arrow) being encoded,
# and its compressor for the whole stream: measured (same benchmark, CSV and
# NDJSON, 0.67-10 MiB batches) as a fixed ~13 MiB (br's window and tables)
# plus up to 8.4 bytes per Arrow byte (NDJSON).
STREAM_FIXED_BYTES = 13 * MIB
STREAM_FACTOR = 8.5
DEFAULT_MAX_RESULT_BYTES = 32_000_000
DEFAULT_CACHE_BYTES = 100_000_000
# Lake mode: the host's replicator (Python verifying each replica with DuckDB
# under data/lake_replica.py's REPLICA_CONFIG) and the lake process it keeps
# (DuckDB 1.5.5 under LAKE_DUCKDB_MEMORY_LIMIT). Measured at 10,000,000 rows in
# a memory cgroup holding just the two (benchmarks/README.md, "Lake mode"): the
# bootstrap was OOM-killed at 160 MiB and held at 256 MiB; advancing by the
# change was still killed at 256 MiB (an open finding), so a lake host needs
# at least this much beside its workers: 512 MiB holds no worker then.
REPLICATOR_BYTES = 256 * MIB


def replicator_reserve(publish_mode: str | None) -> int:
    """What the host's lake replicator takes from the container (0 in file mode)."""
    return REPLICATOR_BYTES if (publish_mode or "file").strip().lower() == "lake" else 0


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes, per worker unless named otherwise."""

    limit: int
    limit_source: str
    workers: int
    headroom: int
    master: int
    reserve: int  # for what shares the container: an ETL (all-in-one), the lake replicator
    python: int
    light: int  # encode_slots x LIGHT_WORK_BYTES
    encode_slots: int  # buffered results encoded at once
    malloc_retained: int
    malloc_retain_per_arena: int
    duckdb: int
    duckdb_untracked: int  # DuckDB's resident memory past `duckdb` (its memory_limit)
    heavy: int
    cache: int
    max_result_bytes: int
    explicit: tuple[str, ...]

    @property
    def per_worker(self) -> int:
        return (
            self.python
            + self.light
            + self.malloc_retained
            + self.duckdb
            + self.duckdb_untracked
            + self.heavy
            + self.cache
        )

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["explicit"] = list(self.explicit)
        out["per_worker"] = self.per_worker
        return out


def stream_reservation(max_result_bytes: int) -> int:
    """What one open stream reserves: its batch's encoding and its compressor."""
    return STREAM_FIXED_BYTES + int(STREAM_FACTOR * max_result_bytes)


def duckdb_untracked(memory_limit: int) -> int:
    """What DuckDB holds past `memory_limit` (measured, see the constants)."""
    return int(memory_limit * DUCKDB_UNTRACKED_FRACTION) + DUCKDB_UNTRACKED_BYTES


def _rest_share(free: int, given: dict[str, int], shares: dict[str, float], part: str) -> int:
    """`part`'s proportional share of what `given` leaves of `free`."""
    weight = sum(share for name, share in shares.items() if name not in given)
    return int((free - sum(given.values())) * shares[part] / weight)


def cpu_workers(cores: int) -> int:
    """Workers the cores call for: one or two per core, 2 to 4."""
    return max(2, min(4, cores))


def plan_workers(limit: MemoryLimit, cpu_workers: int, reserve: int = 0) -> int:
    """How many workers the limit holds (at most `cpu_workers`, at least 1)."""
    room = limit.bytes - headroom(limit.bytes) - MASTER_BYTES - reserve
    return max(1, min(cpu_workers, room // MIN_WORKER_BYTES))


def plan_budget(
    limit: MemoryLimit,
    *,
    workers: int,
    query_workers: int,
    duckdb_memory_limit: int | None = None,
    result_cache_bytes: int | None = None,
    max_result_bytes: int | None = None,
    reserve: int = 0,
) -> MemoryBudget:
    """Split `limit` (see the module docstring); `None` settings are derived."""
    explicit = explicit_settings(
        DUCKDB_MEMORY_LIMIT=duckdb_memory_limit,
        RESULT_CACHE_BYTES=result_cache_bytes,
        MAX_RESULT_BYTES=max_result_bytes,
    )
    spare = headroom(limit.bytes)
    per_worker = (limit.bytes - spare - MASTER_BYTES - reserve) // max(1, workers)
    # Every query thread may own a malloc arena, plus the event loop's.
    arenas = query_workers + 1
    tight = per_worker < 768 * MIB
    retain = RETAIN_PER_ARENA_TIGHT if tight else RETAIN_PER_ARENA
    encode_slots = min(query_workers, TIGHT_ENCODE_SLOTS) if tight else query_workers
    if reserve:
        encode_slots = min(encode_slots, SHARED_ENCODE_SLOTS)
    light = encode_slots * LIGHT_WORK_BYTES
    fixed = PYTHON_WORKER_BYTES + light + arenas * retain
    free = per_worker - fixed
    # Name the reserve: an operator otherwise cannot tell why 512 MiB is too little.
    where = f"the memory limit is {limit.bytes // MIB} MiB ({limit.source})" + (
        f", {reserve // MIB} MiB of it reserved for the lake replicator or the all-in-one ETL"
        if reserve
        else ""
    )
    fix = where + (
        f" for {workers} workers: lower WEB_CONCURRENCY" if workers > 1 else ": raise MEMORY_LIMIT"
    )
    if free < MIN_DUCKDB + MIN_HEAVY:
        lower = "lower WEB_CONCURRENCY or " if workers > 1 else ""
        raise ConfigurationError(
            f"{where}: too little for {workers} worker(s) (each needs at least"
            f" {(fixed + MIN_DUCKDB + MIN_HEAVY) // MIB} MiB, it would get"
            f" {max(0, per_worker) // MIB} MiB); {lower}raise MEMORY_LIMIT / the"
            " container's memory"
        )
    # Shares of what is free: DuckDB 45%, heavy work 35%, cache 20%; an explicit
    # value takes its bytes and the others share the rest in proportion.
    shares = {"duckdb": 0.45, "heavy": 0.35, "cache": 0.20}
    # The DuckDB share covers its memory_limit and what it holds past it.
    given: dict[str, int] = {}
    if duckdb_memory_limit is not None:
        given["duckdb"] = duckdb_memory_limit + duckdb_untracked(duckdb_memory_limit)
    if result_cache_bytes is not None:
        given["cache"] = result_cache_bytes
    min_duckdb = MIN_DUCKDB_SHARED if reserve else MIN_DUCKDB
    floor = min_duckdb + duckdb_untracked(min_duckdb)
    if duckdb_memory_limit is None and _rest_share(free, given, shares, "duckdb") < floor:
        # DuckDB's proportional share cannot hold its minimum: it takes the
        # minimum first and the others share what is left.
        duckdb_memory_limit = min_duckdb
        given["duckdb"] = floor
    rest = free - sum(given.values())
    weight = sum(share for part, share in shares.items() if part not in given)
    parts = {part: given.get(part, int(rest * share / weight)) for part, share in shares.items()}
    if parts["cache"] > DEFAULT_CACHE_BYTES and result_cache_bytes is None:
        # A larger cache helps little; DuckDB (or large results) gets the rest.
        parts["duckdb" if duckdb_memory_limit is None else "heavy"] += (
            parts["cache"] - DEFAULT_CACHE_BYTES
        )
        parts["cache"] = DEFAULT_CACHE_BYTES
    duckdb = (
        duckdb_memory_limit
        if duckdb_memory_limit is not None
        else int((parts["duckdb"] - DUCKDB_UNTRACKED_BYTES) / (1 + DUCKDB_UNTRACKED_FRACTION))
    )
    if duckdb < min_duckdb or parts["heavy"] < MIN_HEAVY:
        raise ConfigurationError(
            f"{fix}, or lower DUCKDB_MEMORY_LIMIT / RESULT_CACHE_BYTES (each worker has"
            f" {free // MIB} MiB after Python's own; DuckDB needs at least"
            f" {min_duckdb // MIB} MiB and large results {MIN_HEAVY // MIB} MiB)"
        )
    # Two of the largest buffered JSON results fit the heavy budget at once.
    largest = max(ENCODE_FACTOR.values())
    fitting = int(parts["heavy"] / (2 * largest))
    if max_result_bytes is None:
        max_result_bytes = min(DEFAULT_MAX_RESULT_BYTES, fitting)
    elif max_result_bytes * largest > parts["heavy"]:
        raise ConfigurationError(
            f"MAX_RESULT_BYTES={max_result_bytes} needs {int(max_result_bytes * largest) // MIB}"
            f" MiB to encode one result as JSON, more than the {parts['heavy'] // MIB} MiB"
            f" per worker for large results: lower MAX_RESULT_BYTES, {fix}, or lower"
            " DUCKDB_MEMORY_LIMIT / RESULT_CACHE_BYTES"
        )
    return MemoryBudget(
        limit=limit.bytes,
        limit_source=limit.source,
        workers=workers,
        headroom=spare,
        master=MASTER_BYTES,
        reserve=reserve,
        python=PYTHON_WORKER_BYTES,
        light=light,
        encode_slots=encode_slots,
        malloc_retained=arenas * retain,
        malloc_retain_per_arena=retain,
        duckdb=duckdb,
        duckdb_untracked=parts["duckdb"] - duckdb,
        heavy=parts["heavy"],
        cache=parts["cache"],
        max_result_bytes=max_result_bytes,
        explicit=explicit,
    )


def apply_budget(
    settings: ApiSettings, limit: MemoryLimit, workers: int, reserve: int = 0
) -> tuple[ApiSettings, MemoryBudget]:
    """The settings with the derived values filled in, and the budget.

    A setting counts as explicit when it came from the environment (or the
    caller), not from its default."""
    given = settings.model_fields_set
    budget = plan_budget(
        limit,
        workers=workers,
        query_workers=settings.query_workers,
        duckdb_memory_limit=(
            parse_size(settings.duckdb_memory_limit, "DUCKDB_MEMORY_LIMIT")
            if "duckdb_memory_limit" in given
            else None
        ),
        result_cache_bytes=settings.result_cache_bytes if "result_cache_bytes" in given else None,
        max_result_bytes=settings.max_result_bytes if "max_result_bytes" in given else None,
        reserve=reserve,
    )
    update: dict[str, object] = {
        "duckdb_memory_limit": format_size(budget.duckdb),
        "result_cache_bytes": budget.cache,
        "max_result_bytes": budget.max_result_bytes,
    }
    if reserve and "duckdb_threads" not in given:
        update["duckdb_threads"] = SHARED_DUCKDB_THREADS
    derived = settings.model_copy(update=update)
    return derived, budget
