"""Full load of a large `inventory` table: ours vs the seed's approach vs COPY.

Creates a database `bench_etl` on the PostgreSQL server of TEST_DATABASE_URL,
fills `inventory` with generate_series, and measures in separate processes
(so each peak RSS is that process's own):

- ours: the sync engine's full load (ConnectorX Arrow stream -> DuckDB), and
  the whole first cycle including the snapshot export and publish;
- seed: `pandas.read_sql` of the whole table, then DuckDB `CREATE TABLE AS`;
- copy: `COPY inventory TO STDOUT (FORMAT binary)` through psql (the source's limit).

Each measurement is repeated `--repeat` times (default 3, a fresh process
each time) and the median is reported, with the load average before and after:
the machine is shared, so single runs are noisy.

Run: .venv/bin/python benchmarks/etl_full_load.py --rows 2000000 --rows 500000
Needs pandas (benchmarks/requirements.txt) for the seed baseline only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DB = "bench_etl"


def db_url(driver: str = "postgresql+psycopg") -> sa.URL:
    return sa.make_url(ADMIN_URL).set(drivername=driver, database=DB)


def create_table(rows: int) -> None:
    admin = sa.create_engine(
        sa.make_url(ADMIN_URL).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {DB}"))
    admin.dispose()
    engine = sa.create_engine(db_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE inventory (id integer PRIMARY KEY, product_id integer NOT NULL,"
                " warehouse varchar(16) NOT NULL, quantity integer NOT NULL,"
                " reorder_level integer NOT NULL, unit_cost numeric(12,2) NOT NULL,"
                " created_at timestamp NOT NULL, updated_at timestamp NOT NULL)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO inventory SELECT g, g % 5000 + 1,"
                " (ARRAY['AMS-1','BER-2','NYC-1','SFO-3','SIN-1'])[g % 5 + 1], g % 500,"
                " (ARRAY[10,20,50])[g % 3 + 1], round((g % 100000) / 100.0, 2),"
                " timestamp '2026-01-01' + g * interval '1 second',"
                " timestamp '2026-01-01' + g * interval '1 second' + interval '1 hour'"
                " FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
        conn.execute(sa.text("CREATE INDEX inventory_updated_at ON inventory (updated_at)"))
        conn.execute(sa.text("VACUUM ANALYZE inventory"))
    engine.dispose()


def drop_database() -> None:
    admin = sa.create_engine(
        sa.make_url(ADMIN_URL).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
    admin.dispose()


def etl_settings(workdir: Path, **extra: str):
    from etl_service.settings import EtlSettings

    return EtlSettings(
        **{
            "SOURCE_URL": db_url().render_as_string(hide_password=False),
            "DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
            "DATA_DIR": str(workdir),
            "STORAGE_URL": (workdir / "store").resolve().as_uri(),
            "TABLES_TO_SYNC": "inventory",
            "LOG_LEVEL": "WARNING",
            "ETL_METRICS_PORT": "0",
            **extra,
        }
    )


def child(mode: str) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    from analytics_shared.logging_config import configure_logging

    configure_logging("WARNING", service="bench")
    workdir = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    result: dict[str, float] = {}
    if mode == "ours":
        from etl_service.sync import SyncEngine

        engine = SyncEngine.from_settings(etl_settings(workdir), progress=False)
        spec = engine.specs[0]
        started = time.perf_counter()
        source_read = engine.source.begin_read(0)
        outcome = engine.syncer.sync(spec, source_read, None, full_refresh=True)
        source_read.close()
        engine.warehouse.checkpoint()
        result["seconds"] = time.perf_counter() - started
        result["rows"] = outcome.row_count
        engine.close()
    elif mode == "ours_cycle":
        from etl_service.sync import SyncEngine

        engine = SyncEngine.from_settings(etl_settings(workdir), progress=False)
        started = time.perf_counter()
        cycle = engine.run_cycle()
        result["seconds"] = time.perf_counter() - started
        assert cycle.status == "success", cycle.error
        result["rows"] = cycle.rows["inventory"]["rows"]
        engine.close()
    elif mode == "seed":
        import duckdb
        import pandas as pd

        started = time.perf_counter()
        engine = sa.create_engine(db_url())
        df = pd.read_sql("SELECT * FROM inventory", engine)
        con = duckdb.connect(str(workdir / "seed.duckdb"))
        con.register("df", df)
        con.execute("CREATE TABLE inventory AS SELECT * FROM df")
        con.execute("CHECKPOINT")
        result["seconds"] = time.perf_counter() - started
        result["rows"] = con.execute("SELECT count(*) FROM inventory").fetchall()[0][0]
        con.close()
        engine.dispose()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def run_child(mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_run(mode: str, repeat: int) -> dict[str, float]:
    """The run with the median time (its own peak RSS) of `repeat` fresh processes."""
    runs = sorted((run_child(mode) for _ in range(repeat)), key=lambda r: r["seconds"])
    return runs[(len(runs) - 1) // 2]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def copy_binary() -> float:
    url = db_url("postgresql")
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        subprocess.run(
            [
                "psql",
                "-h",
                str(url.host),
                "-p",
                str(url.port or 5432),
                "-U",
                str(url.username),
                "-d",
                DB,
                "-c",
                "COPY inventory TO STDOUT (FORMAT binary)",
            ],
            check=True,
            stdout=devnull,
        )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    sizes = args.rows or [2_000_000]
    repeat = max(1, args.repeat)
    report = []
    print(f"load average before: {load_average()}")
    try:
        for rows in sizes:
            create_table(rows)
            copy_s = statistics.median(copy_binary() for _ in range(repeat))
            ours = median_run("ours", repeat)
            cycle = median_run("ours_cycle", repeat)
            seed = median_run("seed", repeat) if rows == max(sizes) else None
            report.append(
                {"rows": rows, "copy_s": copy_s, "ours": ours, "cycle": cycle, "seed": seed}
            )
    finally:
        drop_database()
    print(f"load average after: {load_average()} (median of {repeat} runs each)")
    print(
        "| rows | COPY binary (psql) | ours: full load | ours: whole first cycle"
        " (incl. export+publish) | seed: pandas.read_sql + CTAS | seed / ours"
        " | ours / COPY | peak RSS ours | peak RSS seed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report:
        ours, seed = r["ours"], r["seed"]
        seed_s = f"{seed['seconds']:.2f} s" if seed else "-"
        ratio = f"{seed['seconds'] / ours['seconds']:.1f}x" if seed else "-"
        seed_mb = f"{seed['peak_rss_mb']:.0f} MB" if seed else "-"
        print(
            f"| {r['rows']:,} | {r['copy_s']:.2f} s | {ours['seconds']:.2f} s"
            f" | {r['cycle']['seconds']:.2f} s | {seed_s} | {ratio}"
            f" | {ours['seconds'] / r['copy_s']:.2f}x | {ours['peak_rss_mb']:.0f} MB | {seed_mb} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
