"""The ETL's memory budget: DuckDB's memory_limit and threads from the
container's limit, explicit settings winning, impossible ones refused by name,
and the working DuckDB actually running with it."""

from __future__ import annotations

import pytest

from analytics_shared.errors import ConfigurationError
from analytics_shared.memory_limit import MemoryLimit
from etl_service.cli import main
from etl_service.ops.memory_budget import EMBEDDED_MINIMUM_BYTES, plan_etl_budget

MIB = 2**20


def _adds_up(budget, limit: int) -> None:
    total = budget.headroom + budget.python + budget.stream + budget.duckdb * 1.5
    assert total <= limit


def test_512_mb_gives_duckdb_a_bounded_share_and_one_thread() -> None:
    budget = plan_etl_budget(MemoryLimit(512 * MIB, "cgroup v2"), cores=8)
    _adds_up(budget, 512 * MIB)
    assert 128 * MIB <= budget.duckdb <= 192 * MIB
    assert budget.threads == 1 and budget.explicit == ()


def test_more_memory_buys_duckdb_more_memory_and_threads_up_to_the_cores() -> None:
    small = plan_etl_budget(MemoryLimit(1024 * MIB, "cgroup v1"), cores=2)
    large = plan_etl_budget(MemoryLimit(8 * 1024 * MIB, "machine"), cores=2)
    assert small.duckdb > 400 * MIB and small.threads == 2
    assert large.duckdb > small.duckdb and large.threads == 2
    _adds_up(small, 1024 * MIB)


def test_explicit_settings_win_when_they_fit() -> None:
    budget = plan_etl_budget(
        MemoryLimit(1024 * MIB, "cgroup v1"),
        cores=4,
        duckdb_memory_limit=100 * MIB,
        duckdb_threads=3,
    )
    assert (budget.duckdb, budget.threads) == (100 * MIB, 3)
    assert budget.explicit == ("ETL_DUCKDB_MEMORY_LIMIT", "ETL_DUCKDB_THREADS")


def test_a_duckdb_limit_larger_than_the_container_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match=r"ETL_DUCKDB_MEMORY_LIMIT=512MiB.*512 MiB"):
        plan_etl_budget(MemoryLimit(512 * MIB, "cgroup v2"), cores=2, duckdb_memory_limit=512 * MIB)


def test_a_container_too_small_for_the_etl_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="raise MEMORY_LIMIT"):
        plan_etl_budget(MemoryLimit(256 * MIB, "cgroup v2"), cores=2)
    # Embedded in the API's worker (all-in-one), its minimum share fits.
    embedded = plan_etl_budget(
        MemoryLimit(EMBEDDED_MINIMUM_BYTES, "all-in-one share"), cores=2, embedded=True
    )
    assert embedded.headroom == 0 and embedded.duckdb >= 32 * MIB


def test_the_cli_exits_2_naming_the_setting(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("MEMORY_LIMIT", "300MB")
    monkeypatch.setenv("SOURCE_URL", f"sqlite:///{tmp_path / 'src.db'}")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ETL_METRICS_PORT", "0")
    assert main(["sync"]) == 2
    err = capsys.readouterr().err
    assert "MEMORY_LIMIT" in err and "286 MiB (MEMORY_LIMIT)" in err


def test_the_working_duckdb_runs_with_the_budget(make_engine, monkeypatch) -> None:
    engine = make_engine(MEMORY_LIMIT="768MiB")
    con = engine.warehouse.con
    limit, threads, temp = con.execute(
        "SELECT current_setting('memory_limit'), current_setting('threads'),"
        " current_setting('temp_directory')"
    ).fetchone()
    budget = plan_etl_budget(MemoryLimit(768 * MIB, "MEMORY_LIMIT"), cores=99)
    assert limit == f"{budget.duckdb // MIB}.0 MiB"
    assert threads >= 1 and temp.endswith("etl_duckdb_tmp")


def test_the_budget_is_shown_on_health_and_metrics(make_engine) -> None:
    import httpx

    from etl_service.ops.health_server import EtlMetrics, HealthServer

    engine = make_engine(MEMORY_LIMIT="1GiB")
    metrics = EtlMetrics()
    assert engine.memory_budget is not None
    metrics.show_memory_budget(engine.memory_budget.as_dict())
    server = HealthServer(metrics, host="127.0.0.1", port=0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        memory = httpx.get(base + "/health").json()["memory"]
        assert memory["limit"] == 1024 * MIB and memory["limit_source"] == "MEMORY_LIMIT"
        shown = [
            float(line.rsplit(" ", 1)[1])
            for line in httpx.get(base + "/metrics").text.splitlines()
            if line.startswith('etl_memory_budget_bytes{part="duckdb"}')
        ]
        assert shown == [float(memory["duckdb"])]
    finally:
        server.stop()
