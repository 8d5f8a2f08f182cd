"""The lake process (`python -m analytics_lake serve`) is reused between calls,
ends itself when idle or too large, and a caller never loses or repeats a call
because of it: a request sent as it ended is sent again, a process that dies
or hangs mid-call is an error for that call only, the next call starts afresh.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from analytics_shared.lake import (
    LakeConfig,
    LakeError,
    LakeProcess,
    LakeUnavailable,
    libpq_conninfo,
    resolve_lake_python,
    run_lake,
)
from analytics_shared.lake import lake_process as lake_process_of
from etl_service.demo_source import create_demo_source
from testsupport.lake import LAKE_TABLES, lake_config


@pytest.fixture
def config(lake_env: dict[str, str], lake_etl, pg_url: str):  # type: ignore[no-untyped-def]
    create_demo_source(pg_url, seed=3).dispose()
    assert lake_etl().run_cycle().status == "success"  # the catalog holds a first snapshot
    return lake_config(lake_env)


@pytest.fixture
def lake_process(config):  # type: ignore[no-untyped-def]
    made: list[LakeProcess] = []

    def make(**changes: float) -> LakeProcess:
        made.append(LakeProcess(replace(config, **changes)))
        return made[-1]

    yield make
    for process in made:
        process.close()


def snapshots(process: LakeProcess, timeout: float = 120) -> dict:  # type: ignore[type-arg]
    request = {"lake": process.config.request(), "tables": list(LAKE_TABLES), "limit": 5}
    return process.call("snapshots", request, timeout)


def wait_until_ended(process: LakeProcess, within: float) -> None:
    proc = process._proc
    assert proc is not None
    proc.wait(within)


def test_one_process_serves_many_calls(lake_process) -> None:  # type: ignore[no-untyped-def]
    process = lake_process()
    answers = [snapshots(process) for _ in range(3)]
    assert process.started == 1
    assert all(a["ok"] and a["current"] == answers[0]["current"] for a in answers)


def test_an_idle_process_ends_itself_and_the_next_call_starts_another(lake_process) -> None:  # type: ignore[no-untyped-def]
    process = lake_process(idle_seconds=2)
    first = snapshots(process)
    wait_until_ended(process, within=30)  # it exits on its own, nobody stops it
    assert snapshots(process)["current"] == first["current"]
    assert process.started == 2


def test_a_request_sent_as_the_process_ends_idle_is_sent_again(lake_process) -> None:  # type: ignore[no-untyped-def]
    process = lake_process(idle_seconds=2)
    snapshots(process)
    proc = process._proc
    assert proc is not None
    proc.wait(30)
    # Its {"idle_exit": true} is still unread in the pipe, as when a request
    # crosses the exit: the caller must send the request again, not fail.
    assert process._proc is proc
    assert snapshots(process)["ok"]
    assert process.started == 2


def test_a_process_above_its_memory_bound_is_recycled_after_answering(lake_process) -> None:  # type: ignore[no-untyped-def]
    process = lake_process(max_rss_mb=1)
    first = snapshots(process)
    assert first["ok"] and first["recycled"]
    assert snapshots(process)["ok"]
    assert process.started == 2


def test_a_process_killed_between_calls_is_replaced(lake_process) -> None:  # type: ignore[no-untyped-def]
    process = lake_process()
    snapshots(process)
    assert process._proc is not None
    os.kill(process._proc.pid, signal.SIGKILL)
    process._proc.wait(10)
    assert snapshots(process)["ok"]
    assert process.started == 2


def test_a_call_that_hangs_or_dies_fails_alone(
    lake_process, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    flag = tmp_path / "paused"
    monkeypatch.setenv("LAKE_PAUSE_AT", f"after-commit:{flag}")
    process = lake_process()  # inherits LAKE_PAUSE_AT: a publish freezes after its commit
    publish = {"lake": process.config.request(), "tables": []}
    started = time.monotonic()
    with pytest.raises(LakeUnavailable, match="no answer within 5 s"):
        process.call("publish", publish, timeout=5)
    assert flag.exists() and time.monotonic() - started < 30
    assert snapshots(process)["ok"]  # a fresh process
    assert process.started == 2

    proc = process._proc
    assert proc is not None
    flag.unlink()
    killer = _kill_when(flag, proc.pid)
    with pytest.raises(LakeError, match="ended with -9 before it answered"):
        process.call("publish", publish, timeout=120)
    killer.join()
    assert snapshots(process)["ok"]
    assert process.started == 3


def _kill_when(flag: Path, pid: int):  # type: ignore[no-untyped-def]
    import threading

    def run() -> None:
        deadline = time.monotonic() + 120
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_commit_to_s3_fits_a_small_lake_memory_limit(lake_etl, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """S3 uploads buffer a whole multipart part in DuckDB's memory; by default a
    part is 80 MB (800GB / 10,000 parts) and the first commit to S3 under the
    lake process's memory limit ran out of memory (seen at 10M rows with 128MB)."""
    create_demo_source(pg_url, seed=5).dispose()
    result = lake_etl(LAKE_DUCKDB_MEMORY_LIMIT="64MB").run_cycle()
    assert result.status == "success", result.error
    assert result.version is not None and result.version.startswith("lake-")


def test_a_failed_call_never_reveals_the_catalogs_password(
    tmp_path: Path, capfd, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """DuckDB's errors quote the catalog's connection string, password included;
    the ETL logs them and stores them in its run history and dead letters (and
    with LOG_LEVEL=DEBUG the lake process prints the traceback)."""
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    password = "pw-7f3e'q z"  # a quote and a space: libpq quoting escapes both
    config = LakeConfig(
        catalog=libpq_conninfo(f"postgresql://analytics:{quote(password)}@127.0.0.1:1/test"),
        metadata_schema="lake_secret_probe",
        data_path=str(tmp_path / "lake") + "/",
        python=resolve_lake_python(None),
    )
    try:
        with pytest.raises(LakeUnavailable) as failed:
            run_lake(config, "snapshots", {"limit": 1, "rows": False})
    finally:
        lake_process_of(config).close()
    assert "pw-7f3e" not in str(failed.value) and "password='***'" in str(failed.value)
    assert "Connection refused" in str(failed.value)  # the cause is still there
    logged = capfd.readouterr().err  # the lake process's traceback
    assert "Traceback" in logged and "pw-7f3e" not in logged
