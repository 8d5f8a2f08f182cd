"""Busy writers on the demo source: inserts, multi-row updates (ties on
updated_at), deletes, and transactions that commit late with an early
updated_at. Shared by the differential tests of both publication modes."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator

import sqlalchemy as sa

__all__ = ["late_writer", "writer", "writers_running"]

NOW = "(now() AT TIME ZONE 'UTC')"  # the demo tables hold naive UTC


def writer(engine: sa.Engine, seed: int, stop: threading.Event, stats: dict[str, int]) -> None:
    rng = random.Random(seed)
    next_id = 100_000
    while not stop.is_set():
        op = rng.random()
        with engine.begin() as conn:
            max_id = conn.execute(sa.text("SELECT max(id) FROM inventory")).scalar() or 1
            if op < 0.3:
                next_id += 1
                conn.execute(
                    sa.text(
                        "INSERT INTO inventory (id, product_id, warehouse, quantity,"
                        f" reorder_level, created_at, updated_at) VALUES (:id, 1, 'AMS-1', :q, 10,"
                        f" {NOW}, {NOW})"
                    ),
                    {"id": next_id, "q": rng.randint(0, 500)},
                )
                stats["inserts"] += 1
            elif op < 0.75:
                ids = [rng.randint(1, max_id) for _ in range(rng.randint(1, 8))]
                conn.execute(
                    sa.text(
                        f"UPDATE inventory SET quantity = :q, updated_at = {NOW}"
                        " WHERE id = ANY(:ids)"
                    ),
                    {"q": rng.randint(0, 500), "ids": ids},
                )
                conn.execute(
                    sa.text(
                        f"UPDATE orders SET status = :s, updated_at = {NOW} WHERE id = ANY(:ids)"
                    ),
                    {"s": rng.choice(["paid", "shipped", "cancelled"]), "ids": ids},
                )
                stats["updates"] += 1
            else:
                conn.execute(
                    sa.text("DELETE FROM inventory WHERE id = :id"),
                    {"id": rng.randint(1, max_id)},
                )
                stats["deletes"] += 1
        stop.wait(rng.uniform(0.005, 0.03))


def late_writer(engine: sa.Engine, seed: int, stop: threading.Event, stats: dict[str, int]) -> None:
    """Transactions whose updated_at is taken long before they commit."""
    rng = random.Random(seed + 1000)
    while not stop.is_set():
        with engine.begin() as conn:
            ids = [rng.randint(1, 1000) for _ in range(rng.randint(1, 5))]
            conn.execute(
                sa.text(
                    f"UPDATE inventory SET reorder_level = :r, updated_at = {NOW}"
                    " WHERE id = ANY(:ids)"
                ),
                {"r": rng.randint(1, 99), "ids": ids},
            )
            time.sleep(rng.uniform(0.3, 1.5))  # commit late, with the early timestamp
        stats["late"] += 1


@contextlib.contextmanager
def writers_running(source: sa.Engine, seed: int) -> Iterator[dict[str, int]]:
    """Both writers busy on `source` for the block; yields their counts."""
    stop = threading.Event()
    stats = {"inserts": 0, "updates": 0, "deletes": 0, "late": 0}
    threads = [
        threading.Thread(target=writer, args=(source, seed, stop, stats)),
        threading.Thread(target=late_writer, args=(source, seed, stop, stats)),
    ]
    for t in threads:
        t.start()
    try:
        yield stats
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
