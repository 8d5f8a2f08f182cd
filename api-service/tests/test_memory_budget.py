"""The memory budget: the container's limit (cgroup v1, v2, none) split per
worker, explicit settings winning, impossible combinations refused by name;
and the admission gate that hands the large-result share out."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from analytics_shared.errors import ConfigurationError
from analytics_shared.memory_limit import MemoryLimit, detect_memory_limit, parse_size
from api_service.errors import Busy
from api_service.ops.memory_budget import (
    ENCODE_FACTOR,
    LIGHT_WORK_BYTES,
    MASTER_BYTES,
    REPLICATOR_BYTES,
    apply_budget,
    duckdb_untracked,
    plan_budget,
    plan_workers,
    replicator_reserve,
    stream_reservation,
)
from api_service.query.admission import AdmissionGate
from api_service.settings import ApiSettings

MIB = 2**20
AUTH = {"AUTH0_API_AUDIENCE": "https://api.test", "AUTH0_DOMAIN": "tenant.test"}


def _limit_from(tmp_path: Path, cgroup: str, files: dict[str, str]) -> MemoryLimit:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: {16 * 2**20} kB\n")
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return detect_memory_limit(root=tmp_path)


def _fits(budget, limit: int) -> None:
    total = budget.headroom + budget.master + budget.reserve + budget.workers * budget.per_worker
    # (reserve: an ETL in the container, the lake replicator)
    assert total <= limit


def test_a_512_mb_cgroup_v2_container_gets_one_worker_and_a_budget_that_adds_up(tmp_path):
    limit = _limit_from(tmp_path, "0::/app\n", {"sys/fs/cgroup/app/memory.max": f"{512 * MIB}\n"})
    assert limit == MemoryLimit(512 * MIB, "cgroup v2")
    workers = plan_workers(limit, cpu_workers=4)
    assert workers == 1
    budget = plan_budget(limit, workers=workers, query_workers=4)
    _fits(budget, 512 * MIB)
    assert 64 * MIB <= budget.duckdb <= 160 * MIB
    assert budget.cache > 0 and budget.heavy >= 2 * ENCODE_FACTOR["json"] * budget.max_result_bytes
    assert budget.heavy >= 2 * stream_reservation(budget.max_result_bytes)  # two exports at once
    assert budget.explicit == ()


def test_a_1_gb_cgroup_v1_container_gets_two_workers(tmp_path):
    limit = _limit_from(
        tmp_path,
        "4:memory:/docker/abc\n0::/\n",
        {
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{1024 * MIB}\n",
        },
    )
    assert limit.source == "cgroup v1"
    assert plan_workers(limit, cpu_workers=2) == 2
    budget = plan_budget(limit, workers=2, query_workers=4)
    _fits(budget, 1024 * MIB)


def test_no_cgroup_limit_budgets_the_machine_and_the_cores_bound_the_workers(tmp_path):
    limit = _limit_from(tmp_path, "0::/\n", {"sys/fs/cgroup/memory.max": "max\n"})
    assert limit == MemoryLimit(16 * 2**30, "machine")
    assert plan_workers(limit, cpu_workers=3) == 3
    budget = plan_budget(limit, workers=3, query_workers=4)
    _fits(budget, limit.bytes)
    assert budget.cache == 100_000_000  # the default cap; DuckDB gets the rest
    assert budget.max_result_bytes == 32_000_000
    assert budget.duckdb > 2 * 2**30


def test_explicit_settings_win_and_the_others_share_the_rest():
    limit = MemoryLimit(1024 * MIB, "MEMORY_LIMIT")
    derived = plan_budget(limit, workers=1, query_workers=4)
    budget = plan_budget(
        limit, workers=1, query_workers=4, duckdb_memory_limit=100 * MIB, result_cache_bytes=0
    )
    assert (budget.duckdb, budget.cache) == (100 * MIB, 0)
    assert budget.heavy > derived.heavy  # what the two gave up
    assert set(budget.explicit) == {"DUCKDB_MEMORY_LIMIT", "RESULT_CACHE_BYTES"}
    _fits(budget, limit.bytes)


def test_settings_from_the_environment_count_as_explicit(monkeypatch):
    for name, value in {
        **AUTH,
        "DUCKDB_MEMORY_LIMIT": "96MiB",
        "MAX_RESULT_BYTES": "4000000",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RESULT_CACHE_BYTES", raising=False)
    settings, budget = apply_budget(ApiSettings(), MemoryLimit(512 * MIB, "cgroup v1"), 1)
    assert settings.duckdb_memory_limit == "96MiB" and budget.duckdb == 96 * MIB
    assert settings.max_result_bytes == 4_000_000
    assert settings.result_cache_bytes == budget.cache < 100_000_000  # derived, not the default
    assert parse_size(settings.duckdb_memory_limit) == budget.duckdb


@pytest.mark.parametrize(
    ("limit_mb", "workers", "kwargs", "names"),
    [
        # The guide's old advice: 2 workers x 512 MB of DuckDB in 512 MB.
        (512, 2, {"duckdb_memory_limit": 512 * MIB}, ["WEB_CONCURRENCY"]),
        (512, 1, {"duckdb_memory_limit": 512 * MIB}, ["DUCKDB_MEMORY_LIMIT"]),
        (512, 1, {"result_cache_bytes": 400 * MIB}, ["RESULT_CACHE_BYTES"]),
        (1024, 1, {"max_result_bytes": 200 * MIB}, ["MAX_RESULT_BYTES"]),
        (200, 1, {}, ["MEMORY_LIMIT"]),
    ],
)
def test_a_combination_that_cannot_fit_is_refused_naming_what_to_change(
    limit_mb, workers, kwargs, names
):
    with pytest.raises(ConfigurationError) as caught:
        plan_budget(
            MemoryLimit(limit_mb * MIB, "cgroup v1"), workers=workers, query_workers=4, **kwargs
        )
    for name in names:
        assert name in str(caught.value)
    assert f"{limit_mb} MiB" in str(caught.value)


def test_an_etl_in_the_same_container_takes_its_reserve_first():
    limit = MemoryLimit(1024 * MIB, "cgroup v1")
    alone = plan_budget(limit, workers=1, query_workers=4)
    shared = plan_budget(limit, workers=1, query_workers=4, reserve=300 * MIB)
    assert shared.per_worker <= alone.per_worker - 300 * MIB + 16 * MIB * 5
    _fits(shared, limit.bytes)
    assert plan_workers(limit, cpu_workers=4, reserve=300 * MIB) == 2
    assert plan_workers(limit, cpu_workers=4) == 3
    assert MASTER_BYTES < 64 * MIB


def test_lake_mode_reserves_the_replicator_and_its_lake_process_first():
    assert replicator_reserve(None) == replicator_reserve("file") == 0
    assert replicator_reserve(" Lake ") == REPLICATOR_BYTES
    limit = MemoryLimit(1024 * MIB, "cgroup v2")
    assert plan_workers(limit, 4, replicator_reserve("lake")) < plan_workers(limit, 4)
    settings = ApiSettings(**AUTH, PUBLISH_MODE="lake")
    _, lake = apply_budget(settings, limit, workers=1, reserve=replicator_reserve("lake"))
    _, alone = apply_budget(ApiSettings(**AUTH), limit, workers=1)
    assert lake.reserve == REPLICATOR_BYTES
    assert lake.per_worker <= alone.per_worker - REPLICATOR_BYTES + 16 * MIB * 5
    _fits(lake, limit.bytes)


def test_a_lake_host_at_512_mb_is_refused_naming_the_limit(monkeypatch):
    monkeypatch.setenv("PUBLISH_MODE", "lake")
    monkeypatch.setenv("MEMORY_LIMIT", "512MB")
    for name, value in AUTH.items():
        monkeypatch.setenv(name, value)
    from api_service.main import memory_budget

    with pytest.raises(ConfigurationError, match="raise MEMORY_LIMIT") as caught:
        memory_budget(ApiSettings())
    # The operator sees why 512 MB is not enough: the replicator's share.
    assert "256 MiB of it reserved for the lake replicator" in str(caught.value)
    monkeypatch.setenv("MEMORY_LIMIT", "768MB")
    _, budget = memory_budget(ApiSettings())
    assert budget.reserve == REPLICATOR_BYTES and budget.workers == 1


# -- the admission gate ------------------------------------------------------------
def test_the_gate_never_hands_out_more_than_its_capacity_and_releases_once():
    gate = AdmissionGate(100, wait_seconds=0.05)
    first = gate.reserve(60, "a")
    with pytest.raises(Busy) as caught:
        gate.reserve(60, "b")
    assert caught.value.status == 503 and caught.value.code == "busy"
    assert caught.value.headers["Retry-After"]
    first.release()
    first.release()  # a second release gives nothing back twice
    assert gate.reserved == 0
    with gate.reserve(100, "c"):
        assert gate.reserved == 100
    assert gate.reserved == 0 and gate.refused == 1


def test_a_waiting_reservation_gets_in_when_memory_is_released():
    gate = AdmissionGate(100, wait_seconds=5)
    held = gate.reserve(80, "a")
    threading.Timer(0.2, held.release).start()
    started = time.monotonic()
    with gate.reserve(50, "b"):
        assert 0.1 < time.monotonic() - started < 4


def test_the_event_loop_side_waits_without_blocking_the_loop():
    gate = AdmissionGate(100, wait_seconds=2)

    async def scenario() -> list[str]:
        order: list[str] = []
        held = await gate.areserve(100, "a")

        async def other() -> None:
            order.append("loop runs")
            await asyncio.sleep(0.1)
            held.release()

        waiting = asyncio.create_task(gate.areserve(100, "b"))
        await other()
        (await waiting).release()
        order.append("admitted")
        return order

    assert asyncio.run(scenario()) == ["loop runs", "admitted"]


def test_all_in_one_at_512_mb_leaves_the_etl_its_share_and_still_fits() -> None:
    from api_service.ops.all_in_one import etl_share
    from etl_service.ops.memory_budget import plan_etl_budget

    limit = MemoryLimit(512 * MIB, "cgroup v2")
    share = etl_share(limit)
    budget = plan_budget(limit, workers=1, query_workers=4, reserve=share)
    _fits(budget, 512 * MIB)
    # Each of the two versions open during a swap gets half of DuckDB's memory:
    # enough for one 500,000-row sort at one thread (24 MB measured); the
    # proportional share (35 MiB) was not, and every such sort failed.
    assert budget.reserve == share and budget.duckdb // 2 >= 24 * MIB
    assert budget.heavy >= stream_reservation(budget.max_result_bytes) and budget.cache > 0
    etl = plan_etl_budget(MemoryLimit(share, "all-in-one share"), cores=2, embedded=True)
    assert etl.headroom == 0 and etl.duckdb >= 32 * MIB


def test_all_in_one_runs_duckdb_on_one_thread_unless_told_otherwise(monkeypatch):
    for name, value in AUTH.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DUCKDB_THREADS", raising=False)
    limit = MemoryLimit(512 * MIB, "cgroup v1")
    shared, _ = apply_budget(ApiSettings(), limit, 1, reserve=128 * MIB)
    assert shared.duckdb_threads == 1
    monkeypatch.setenv("DUCKDB_THREADS", "2")
    assert apply_budget(ApiSettings(), limit, 1, reserve=128 * MIB)[0].duckdb_threads == 2


def test_all_in_one_refuses_more_than_one_worker(monkeypatch, capsys) -> None:
    from api_service.cli import main

    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    monkeypatch.setenv("ALL_IN_ONE", "false")  # restored afterwards: --with-etl sets it
    assert main(["serve", "--with-etl"]) == 2
    assert "all-in-one runs one worker" in capsys.readouterr().err


def test_what_duckdb_holds_past_its_limit_and_each_query_threads_light_work_are_budgeted():
    limit = MemoryLimit(512 * MIB, "cgroup v1")
    budget = plan_budget(limit, workers=1, query_workers=4)
    # DuckDB's share covers its memory_limit and what it was measured to hold past it.
    assert 0 <= budget.duckdb_untracked - duckdb_untracked(budget.duckdb) <= 1  # (rounding)
    assert budget.light == 4 * LIGHT_WORK_BYTES
    _fits(budget, limit.bytes)
    # An explicit DUCKDB_MEMORY_LIMIT keeps its value and still pays for the rest.
    given = plan_budget(limit, workers=1, query_workers=4, duckdb_memory_limit=96 * MIB)
    assert given.duckdb == 96 * MIB and given.duckdb_untracked == duckdb_untracked(96 * MIB)
    _fits(given, limit.bytes)
    # More query threads: more light work, less for the shares.
    big = MemoryLimit(1024 * MIB, "cgroup v1")
    narrow = plan_budget(big, workers=1, query_workers=4)
    wider = plan_budget(big, workers=1, query_workers=8)
    assert wider.light == 2 * narrow.light and wider.duckdb < narrow.duckdb
    _fits(wider, big.bytes)


def test_many_cores_at_512_mb_still_start_and_encode_no_more_than_the_budget_holds():
    # 8 cores, one worker: 16 query threads by default; their encodes share 4 slots.
    budget = plan_budget(MemoryLimit(512 * MIB, "cgroup v1"), workers=1, query_workers=16)
    assert budget.encode_slots == 4 and budget.light == 4 * LIGHT_WORK_BYTES
    _fits(budget, 512 * MIB)
