"""Retries, dead letters and a dropped source connection (through a real TCP proxy)."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from etl_service.retry import RetryError, RetryPolicy, is_transient, retry
from etl_service.source import Source, SourceError, SourceUnavailable


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(attempts=6, base_seconds=0.5, max_seconds=3)
    rng = random.Random(1)
    for attempt, cap in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0)):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert max(delays) <= cap and min(delays) >= 0
        assert max(delays) > cap * 0.8  # full jitter spreads over [0, cap]


def test_transient_errors_are_retried_and_permanent_ones_are_not():
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise SourceUnavailable("connection reset by peer")
        return "ok"

    policy = RetryPolicy(attempts=5, base_seconds=0.01, max_seconds=0.01)
    assert retry(flaky, policy, what="x", sleep=slept.append) == ("ok", 3)
    assert len(slept) == 2

    def broken():
        raise SourceError("relation does not exist")

    with pytest.raises(RetryError) as err:
        retry(broken, policy, what="y", sleep=slept.append)
    assert err.value.attempts == 1


def test_connectorx_connection_errors_are_classified_transient():
    src = Source("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(SourceError) as err:
        src.read("SELECT 1", 10)
    assert is_transient(err.value), str(err.value)
    src.close()


def test_dropped_source_connection_retries_then_dead_letters_then_recovers(
    pg_url, pg_proxy, make_engine, same_rows
):
    proxy, proxied_url = pg_proxy
    source = create_demo_source(pg_url)
    etl = make_engine(SOURCE_URL=proxied_url, TABLES_TO_SYNC="inventory,orders")
    assert etl.run_cycle().status == "success"

    proxy.drop()
    failed = etl.run_cycle()
    assert failed.status == "failed"
    [entry] = etl.state.dead_letters()
    assert entry["table_name"] is None and entry["attempts"] == 3  # RETRY_ATTEMPTS
    assert etl.state.recent_runs(1)[0]["status"] == "failed"

    proxy.restore()
    with source.begin() as conn:
        conn.execute(sa.text("UPDATE inventory SET quantity = 0, updated_at = now() WHERE id = 1"))
    ok = etl.run_cycle()  # the next scheduled cycle still runs
    assert ok.status == "success"
    assert etl.state.dead_letters() == []  # resolved by the success
    same_rows(source, etl.warehouse.con, "inventory")
    source.dispose()


def test_a_connection_dropped_mid_table_is_retried_on_a_new_snapshot(
    pg_url, pg_proxy, make_engine, same_rows, monkeypatch
):
    proxy, proxied_url = pg_proxy
    source = create_demo_source(pg_url)
    etl = make_engine(SOURCE_URL=proxied_url, TABLES_TO_SYNC="inventory,orders")
    etl.run_cycle()
    real_read = Source.read
    dropped = []

    def read_once_dropped(self, sql, batch_size, snapshot=None):
        if "orders" in sql and not dropped:
            dropped.append(sql)
            proxy.drop()  # cuts the snapshot connection too
            proxy.restore()
        return real_read(self, sql, batch_size, snapshot)

    monkeypatch.setattr(Source, "read", read_once_dropped)
    with source.begin() as conn:
        conn.execute(sa.text("UPDATE orders SET status = 'x', updated_at = now() WHERE id < 5"))
    result = etl.run_cycle()
    assert dropped and result.status == "success", result.error
    same_rows(source, etl.warehouse.con, "orders")
    source.dispose()


def test_a_failing_table_dead_letters_and_the_others_sync(pg_url, make_engine, monkeypatch):
    source = create_demo_source(pg_url)
    etl = make_engine(TABLES_TO_SYNC="inventory,orders,products")
    etl.run_cycle()
    real_read = Source.read

    def orders_down(self, sql, batch_size, snapshot=None):
        if '"orders"' in sql or " orders" in sql:
            raise SourceUnavailable("could not receive data from server")
        return real_read(self, sql, batch_size, snapshot)

    monkeypatch.setattr(Source, "read", orders_down)
    with source.begin() as conn:
        conn.execute(sa.text("UPDATE products SET name = 'n', updated_at = now() WHERE id = 1"))
    result = etl.run_cycle()
    assert result.status == "partial" and result.published
    assert set(result.failed_tables) == {"orders"}
    assert result.rows["products"]["changed"] == 1
    second = etl.run_cycle()
    assert second.status == "partial"
    [entry] = etl.state.dead_letters()
    assert entry["table_name"] == "orders" and entry["attempts"] == 6  # 2 cycles x 3
    monkeypatch.undo()
    assert etl.run_cycle().status == "success"
    assert etl.state.dead_letters() == []
    assert etl.state.dead_letters("resolved")[0]["id"] == entry["id"]
    source.dispose()


def test_a_lost_state_store_fails_the_cycle_cleanly_and_the_next_one_catches_up(
    pg_url, pg_proxy, make_engine, same_rows
):
    # The state store (watermarks, runs, dead letters, the advisory lock) sits
    # behind the proxy; the source does not.
    proxy, proxied_url = pg_proxy
    source = create_demo_source(pg_url)
    etl = make_engine(DATABASE_URL=proxied_url, TABLES_TO_SYNC="inventory,orders")
    first = etl.run_cycle()
    assert first.status == "success"

    with source.begin() as conn:
        conn.execute(
            sa.text("UPDATE inventory SET quantity = 7, updated_at = now() WHERE id <= 10")
        )
    proxy.drop()
    lost = etl.run_cycle()  # retries, then gives up without raising
    assert lost.status == "failed" and not lost.published and lost.error
    assert etl.publisher.current().version == first.version  # type: ignore[union-attr]

    proxy.restore()
    back = etl.run_cycle()
    assert back.status == "success" and back.published, back.error
    assert back.rows["inventory"]["changed"] == 10
    same_rows(source, etl.warehouse.con, "inventory")
    statuses = [run["status"] for run in etl.state.recent_runs(5)]
    assert "running" not in statuses
    source.dispose()
