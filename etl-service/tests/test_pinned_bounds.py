"""The incremental read's lower bound, pinned: it is inclusive (a row whose
cursor equals the bound is re-read) and it reaches back by the lookback (a
late commit stamped before the previous watermark is still read)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source


@pytest.fixture
def source(pg_url):
    engine = create_demo_source(pg_url)
    yield engine
    engine.dispose()


def test_a_row_stamped_exactly_at_the_watermark_is_read(source, make_engine, same_rows):
    """Ties on the boundary: `cursor >= watermark - lookback`, not `>`.

    With no lookback the bound is the watermark itself; a row committed after
    the cycle read the clock can carry exactly that timestamp (same tick)."""
    etl = make_engine(SYNC_SETTLE_SECONDS="0", SYNC_LOOKBACK_SECONDS="0")
    etl.run_cycle()
    state = etl.state.table("inventory")
    assert state is not None and state.watermark is not None
    with source.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE inventory SET quantity = 777, updated_at = CAST(:w AS timestamp)"
                " WHERE id = 7"
            ),
            {"w": state.watermark},
        )
    second = etl.run_cycle()
    assert second.status == "success"
    assert second.rows["inventory"]["read"] >= 1
    assert etl.warehouse.con.execute("SELECT quantity FROM inventory WHERE id = 7").fetchall() == [
        (777,)
    ]
    same_rows(source, etl.warehouse.con, "inventory")
