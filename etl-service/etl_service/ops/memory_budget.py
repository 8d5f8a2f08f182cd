"""The ETL's memory budget: the container's limit split once, at start-up.

    limit = headroom + python + stream + DuckDB x (1 + overhead)

- python: the process with its libraries mapped (ConnectorX, Arrow, DuckDB,
  SQLAlchemy, boto3) and what it allocates outside DuckDB;
- stream: the Arrow batches in flight from ConnectorX (BATCH_SIZE rows each),
  the zstd buffers and the upload's parts (analytics_shared.object_store
  uploads at most UPLOAD_CONCURRENCY parts at once);
- DuckDB: `memory_limit` of the working database. Its buffer pool holds the
  table being loaded, the merge's join and the export; past the limit it
  writes to `temp_directory` under DATA_DIR. Without a limit DuckDB takes 80%
  of the machine's RAM, not the container's: a 10,000,000-row full load was
  OOM-killed at 512 MiB. DuckDB allocates outside its buffer pool too, about
  half of it again (measured), hence the overhead share.

`threads` follows DuckDB's share (one per 128 MiB, at most the cores).
Explicit settings win (ETL_DUCKDB_MEMORY_LIMIT, ETL_DUCKDB_THREADS); a
combination that cannot fit raises `ConfigurationError` naming what to
change. Pure arithmetic; `etl_service.sync` applies it and logs it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from analytics_shared.errors import ConfigurationError
from analytics_shared.memory_limit import (
    MemoryLimit,
    detect_memory_limit,
    explicit_settings,
    format_size,
    headroom,
    parse_size,
)

if TYPE_CHECKING:
    from etl_service.settings import EtlSettings

__all__ = ["EMBEDDED_MINIMUM_BYTES", "EtlBudget", "duckdb_config", "etl_budget", "plan_etl_budget"]

MIB = 2**20
# Measured (benchmarks/etl_scaling.py, a 10,000,000-row full load at 512 MiB):
# the process's resident memory other than DuckDB's buffer pool.
PYTHON_BYTES = 192 * MIB
# Embedded in the API's worker (all-in-one), the libraries are already paid
# for: what the ETL adds is its own modules (measured: 36 MiB) and heap.
EMBEDDED_PYTHON_BYTES = 48 * MIB
STREAM_BYTES = 32 * MIB
DUCKDB_OVERHEAD = 0.5
# Loads write through to the database file and merges join a small delta, so
# DuckDB works (slower, spilling) with little memory.
MIN_DUCKDB = 32 * MIB
DUCKDB_BYTES_PER_THREAD = 128 * MIB
# The least an ETL embedded in the API's worker needs (all-in-one).
EMBEDDED_MINIMUM_BYTES = (
    EMBEDDED_PYTHON_BYTES + STREAM_BYTES + int(MIN_DUCKDB * (1 + DUCKDB_OVERHEAD))
)


@dataclass(frozen=True)
class EtlBudget:
    limit: int
    limit_source: str
    headroom: int
    python: int
    stream: int
    duckdb: int
    threads: int
    explicit: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "explicit": list(self.explicit)}


def plan_etl_budget(
    limit: MemoryLimit,
    *,
    cores: int,
    duckdb_memory_limit: int | None = None,
    duckdb_threads: int | None = None,
    embedded: bool = False,
) -> EtlBudget:
    """Split `limit`; `embedded` when it is the ETL's share of the API's worker
    (all-in-one): the container's headroom and the libraries are counted there."""
    spare = 0 if embedded else headroom(limit.bytes)
    python = EMBEDDED_PYTHON_BYTES if embedded else PYTHON_BYTES
    free = limit.bytes - spare - python - STREAM_BYTES
    room = int(free / (1 + DUCKDB_OVERHEAD))
    where = f"the memory limit is {limit.bytes // MIB} MiB ({limit.source})"
    if duckdb_memory_limit is None and room < MIN_DUCKDB:
        need = (limit.bytes - free) + int(MIN_DUCKDB * (1 + DUCKDB_OVERHEAD))
        raise ConfigurationError(
            f"{where}: the ETL needs at least {need // MIB} MiB; raise MEMORY_LIMIT"
            " / the container's memory"
        )
    if duckdb_memory_limit is not None and duckdb_memory_limit > room:
        raise ConfigurationError(
            f"ETL_DUCKDB_MEMORY_LIMIT={duckdb_memory_limit // MIB}MiB does not fit: {where},"
            f" which leaves DuckDB at most {max(0, room) // MIB} MiB; lower"
            " ETL_DUCKDB_MEMORY_LIMIT or raise MEMORY_LIMIT / the container's memory"
        )
    duckdb = duckdb_memory_limit if duckdb_memory_limit is not None else room
    threads = duckdb_threads or max(1, min(cores, duckdb // DUCKDB_BYTES_PER_THREAD))
    explicit = explicit_settings(
        ETL_DUCKDB_MEMORY_LIMIT=duckdb_memory_limit, ETL_DUCKDB_THREADS=duckdb_threads
    )
    return EtlBudget(
        limit=limit.bytes,
        limit_source=limit.source,
        headroom=spare,
        python=python,
        stream=STREAM_BYTES,
        duckdb=duckdb,
        threads=threads,
        explicit=explicit,
    )


def etl_budget(settings: EtlSettings, share: int | None = None) -> EtlBudget:
    """The budget for this process from its container and its settings, or
    for an ETL embedded in the API's worker with `share` bytes (all-in-one)."""
    given = settings.etl_duckdb_memory_limit
    return plan_etl_budget(
        (
            detect_memory_limit(settings.memory_limit)
            if share is None
            else MemoryLimit(share, "all-in-one share")
        ),
        cores=os.cpu_count() or 1,
        duckdb_memory_limit=parse_size(given, "ETL_DUCKDB_MEMORY_LIMIT") if given else None,
        duckdb_threads=settings.etl_duckdb_threads,
        embedded=share is not None,
    )


def duckdb_config(budget: EtlBudget, settings: EtlSettings) -> dict[str, str | int]:
    """The working DuckDB's settings: the budget, and where it spills."""
    return {
        "memory_limit": format_size(budget.duckdb),
        "threads": budget.threads,
        "temp_directory": str((settings.data_dir / "etl_duckdb_tmp").resolve()),
    }
