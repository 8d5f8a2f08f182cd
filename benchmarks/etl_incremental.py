"""An incremental cycle must scale with the delta, not the table.

At each table size: full load `inventory` (as benchmarks/etl_full_load.py
builds it; median of 3), change 1,000 random rows in the source (bumping
updated_at), then time one incremental sync of the table (snapshot, clock,
delta read, merge; median of 5) and, separately, the whole cycle including
snapshot export and publish. The load average is printed: the machine is shared.

Models: the whole incremental cycle (1,000 changed rows; median of 7, the
two engines interleaved) and an unchanged cycle (median of 7), without models (`MODELS_DIR`
empty) and with two models over `inventory` (a summary view and a
per-warehouse-and-product rollup materialized as a table), in the same run,
as a ratio.

Run: .venv/bin/python benchmarks/etl_incremental.py --rows 500000 --rows 2000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
from etl_full_load import create_table, db_url, drop_database, etl_settings

CHANGED = 1000


def touch_rows(rows: int, seed: int) -> None:
    engine = sa.create_engine(db_url())
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE inventory SET quantity = quantity + 1,"
                " updated_at = now() AT TIME ZONE 'UTC'"
                " WHERE id IN (SELECT (hashint4(g + :seed) & 2147483647) % :n + 1"
                " FROM generate_series(1, :k * 2) g LIMIT :k)"
            ),
            {"seed": seed, "n": rows, "k": CHANGED},
        )
    engine.dispose()


def measure(rows: int) -> dict[str, float]:
    from etl_service.sync import SyncEngine

    workdir = Path(tempfile.mkdtemp(prefix="etl-bench-inc-"))
    engine = SyncEngine.from_settings(
        etl_settings(workdir, SYNC_LOOKBACK_SECONDS="0", SYNC_SETTLE_SECONDS="0"),
        progress=False,
    )
    spec = engine.specs[0]
    assert engine.run_cycle().status == "success"  # first cycle: state, manifest
    fulls = []
    for _ in range(3):
        started = time.perf_counter()
        source_read = engine.source.begin_read(0)
        outcome = engine.syncer.sync(spec, source_read, None, full_refresh=True)
        source_read.close()
        fulls.append(time.perf_counter() - started)
    watermark = outcome.watermark

    incremental, changed = [], 0
    for seed in (1, 2, 3, 4, 5):
        time.sleep(0.01)
        touch_rows(rows, seed)
        started = time.perf_counter()
        source_read = engine.source.begin_read(0)
        outcome = engine.syncer.sync(spec, source_read, watermark)
        source_read.close()
        incremental.append(time.perf_counter() - started)
        watermark, changed = outcome.watermark, outcome.changed
    touch_rows(rows, 6)
    started = time.perf_counter()
    cycle = engine.run_cycle()
    cycle_s = time.perf_counter() - started
    engine.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "rows": rows,
        "full_s": statistics.median(fulls),
        "inc_s": statistics.median(incremental),
        "changed": changed,
        "cycle_s": cycle_s,
        "cycle_read": cycle.rows["inventory"]["read"],
    }


MODELS = {
    "inventory_summary": "-- materialized: view\nSELECT count(*) AS items, sum(quantity) AS units,"
    " avg(unit_cost) AS average_cost, min(updated_at) AS oldest, max(updated_at) AS latest"
    " FROM inventory",
    "stock_by_warehouse_product": "-- materialized: table\nSELECT warehouse, product_id,"
    " sum(quantity) AS quantity, sum(reorder_level) AS reorder_level, count(*) AS lines"
    " FROM inventory GROUP BY warehouse, product_id",
}


def measure_models(rows: int, repeat: int = 7) -> dict[str, float]:
    """Whole cycles with 1,000 changed rows, without and with models, interleaved
    (so a change in the machine's load hits both alike; median of `repeat`),
    then unchanged cycles the same way."""
    from etl_service.sync import SyncEngine

    folder = Path(tempfile.mkdtemp(prefix="etl-bench-model-files-"))
    for name, sql in MODELS.items():
        (folder / f"{name}.sql").write_text(sql)
    engines = {}
    for label, models_dir in (("without", ""), ("with", str(folder))):
        workdir = folder / label
        engines[label] = SyncEngine.from_settings(
            etl_settings(
                workdir, SYNC_LOOKBACK_SECONDS="0", SYNC_SETTLE_SECONDS="0", MODELS_DIR=models_dir
            ),
            progress=False,
        )
        assert engines[label].run_cycle().status == "success"
    times: dict[str, list[float]] = {label: [] for label in engines}
    seed = 100
    for _ in range(repeat):
        for label, engine in engines.items():
            seed += 1
            time.sleep(0.01)
            touch_rows(rows, seed)
            started = time.perf_counter()
            result = engine.run_cycle()
            times[label].append(time.perf_counter() - started)
            assert result.published, result
    for engine in engines.values():  # each engine also takes the other's last change
        engine.run_cycle()
    quiet: dict[str, list[float]] = {label: [] for label in engines}
    for _ in range(repeat):
        for label, engine in engines.items():
            started = time.perf_counter()
            result = engine.run_cycle()
            quiet[label].append(time.perf_counter() - started)
            assert not result.published and not result.models_rebuilt
    result_row: dict[str, float] = {"rows": rows}
    for label, engine in engines.items():
        result_row[f"{label}_quiet_s"] = statistics.median(quiet[label])
        result_row[f"{label}_cycle_s"] = statistics.median(times[label])
        engine.close()
    shutil.rmtree(folder, ignore_errors=True)
    return result_row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, action="append")
    args = parser.parse_args()
    from analytics_shared.logging_config import configure_logging

    configure_logging("WARNING", service="bench")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load}")
    results, model_results = [], []
    try:
        for rows in args.rows or [500_000, 2_000_000]:
            create_table(rows)
            results.append(measure(rows))
            model_results.append(measure_models(rows))
    finally:
        drop_database()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average after: {load}")
    print(
        "| rows | full load | incremental sync (1,000 changed) | ratio"
        " | whole incremental cycle incl. export+publish |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['full_s']:.2f} s | {r['inc_s'] * 1000:.0f} ms"
            f" ({r['changed']} rows changed) | {r['inc_s'] / r['full_s'] * 100:.2f}%"
            f" | {r['cycle_s']:.2f} s ({r['cycle_read']} rows read) |"
        )
    print()
    print(
        "| rows | cycle without models | cycle with 2 models | with / without"
        " | unchanged cycle without | unchanged cycle with |"
    )
    print("|---|---|---|---|---|---|")
    for m in model_results:
        print(
            f"| {m['rows']:,} | {m['without_cycle_s']:.2f} s | {m['with_cycle_s']:.2f} s"
            f" | {m['with_cycle_s'] / m['without_cycle_s']:.2f}x"
            f" | {m['without_quiet_s'] * 1000:.0f} ms | {m['with_quiet_s'] * 1000:.0f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
