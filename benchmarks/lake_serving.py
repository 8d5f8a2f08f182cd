"""Serving from a lake replica vs from a file-mode snapshot: the same data, the same API.

    .venv/bin/python -m benchmarks.lake_serving [--duration 12] [--rounds 3]

Builds api_bench's data (2,000,000 inventory rows plus products, customers,
orders, transactions) once in a working DuckDB (2.0.1), then two files of
the same tables: the file mode's snapshot (`export_snapshot`) and a lake
replica (the tables committed to a DuckLake in a fresh PostgreSQL catalog
with a local data folder, then bootstrapped into a replica file by the lake
environment's DuckDB 1.5.5, as an API host's replicator does). Each is
published to its own folder store and served by our API (Gunicorn, 2
workers, result cache off). One client runs api_bench's overhead shapes
against both servers in interleaved rounds, then the same queries straight
in DuckDB on each file. Prints p50 per shape and the ratio lake/file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import sqlalchemy as sa

from analytics_shared.lake import LakeConfig, libpq_conninfo, resolve_lake_python, run_lake
from analytics_shared.manifest import TableInfo, sha256_file
from analytics_shared.object_store import LocalObjectStore
from api_service.dev.issuer import DevIssuer
from benchmarks.api_bench import (
    AUDIENCE,
    BUILD_SQL,
    OVERHEAD_SHAPES,
    _median,
    direct_duckdb_times,
    measure,
)
from etl_service.export import SnapshotFile, export_snapshot
from etl_service.publisher import Publisher
from testsupport.api_server import ApiServer

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def build(work: Path, catalog_url: str) -> tuple[SnapshotFile, SnapshotFile, dict[str, TableInfo]]:
    con = duckdb.connect(str(work / "working.duckdb"))
    con.execute(BUILD_SQL)
    con.execute("CHECKPOINT")
    snapshot = export_snapshot(con, work / "file" / "snapshot.db")
    names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    tables = {
        n: TableInfo(row_count=int(con.execute(f"SELECT count(*) FROM {n}").fetchall()[0][0]))
        for n in names
    }
    (work / "parquet").mkdir()
    for n in names:
        con.execute(f"COPY {n} TO '{work / 'parquet' / n}.parquet' (FORMAT parquet)")
    con.close()
    lake_dir = work / "lake-data"
    config = LakeConfig(
        catalog=libpq_conninfo(catalog_url),
        metadata_schema="bench_lake",
        data_path=f"{lake_dir}/",
        python=resolve_lake_python(None),
    )
    started = time.monotonic()
    committed = run_lake(
        config,
        "publish",
        {
            "tables": [
                {"name": n, "primary_key": ["id"], "full": str(work / "parquet" / f"{n}.parquet")}
                for n in names
            ]
        },
    )
    replica = work / "lake" / "replica.db"
    replica.parent.mkdir()
    run_lake(
        config,
        "bootstrap",
        {
            "mirror": str(lake_dir),
            "replica": str(replica),
            "tables": names,
            "snapshot_id": committed["snapshot_id"],
        },
    )
    print(f"lake commit + replica bootstrap: {time.monotonic() - started:.1f} s", flush=True)
    lake = SnapshotFile(replica, sha256_file(replica), replica.stat().st_size, "lake", None)
    return snapshot, lake, tables


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per shape and server")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin = sa.create_engine(
        sa.make_url(ADMIN_URL).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    db = f"bench_lake_serving_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    catalog = sa.make_url(ADMIN_URL).set(database=db).render_as_string(hide_password=False)
    servers: dict[str, ApiServer] = {}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="lake-serving-") as tmp,
            DevIssuer(AUDIENCE) as issuer,
        ):
            work = Path(tmp)
            snapshot, replica, tables = build(work, catalog)
            files = {"file": snapshot, "lake": replica}
            token = issuer.mint(sub="bench", ttl=7200)
            for mode, snap in files.items():
                print(f"{mode}: {snap.size / 1e6:.0f} MB", flush=True)
                Publisher(LocalObjectStore(work / f"store-{mode}")).publish(snap, tables)
                env = {
                    **issuer.settings_env(),
                    "STORAGE_URL": (work / f"store-{mode}").resolve().as_uri(),
                    "DATA_DIR": str(work / f"data-{mode}"),
                    "RATE_LIMIT_REQUESTS": "1000000000",
                    "RESULT_CACHE_BYTES": "0",
                    "LOG_LEVEL": "WARNING",
                }
                servers[mode] = ApiServer(env, workers=2, log_path=work / f"{mode}.log").start(
                    ready_timeout=120
                )
            api: dict[tuple[str, str], list[float]] = {}
            direct: dict[tuple[str, str], list[float]] = {}
            errors = 0
            threads = max(1, (os.cpu_count() or 2) // 2)
            load_before = os.getloadavg()
            for round_ in range(args.rounds):
                for shape in OVERHEAD_SHAPES:
                    for mode in ("file", "lake") if round_ % 2 == 0 else ("lake", "file"):
                        result = measure(
                            servers[mode].url, [token], shape, None, 1, args.duration / args.rounds
                        )
                        api.setdefault((mode, shape), []).extend(result.latencies_ms)
                        errors += result.errors
                        direct.setdefault((mode, shape), []).extend(
                            direct_duckdb_times(files[mode].path, threads, OVERHEAD_SHAPES[shape])
                        )
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
            load_after = os.getloadavg()
    finally:
        for server in servers.values():
            server.stop()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
    print(
        "\n| shape | API p50 file | API p50 lake | lake/file | DuckDB p50 file | DuckDB p50 lake"
        " | lake/file |\n|---|---|---|---|---|---|---|"
    )
    for shape in OVERHEAD_SHAPES:
        af, al = _median(api[("file", shape)]), _median(api[("lake", shape)])
        df, dl = _median(direct[("file", shape)]), _median(direct[("lake", shape)])
        print(
            f"| {shape} | {af:.2f} ms | {al:.2f} ms | {al / af:.2f} | {df:.2f} ms"
            f" | {dl:.2f} ms | {dl / df:.2f} |"
        )
    print(
        f"\n{sum(len(v) for v in api.values())} API requests, {errors} errors; load average"
        f" before {'/'.join(f'{x:.2f}' for x in load_before)},"
        f" after {'/'.join(f'{x:.2f}' for x in load_after)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
