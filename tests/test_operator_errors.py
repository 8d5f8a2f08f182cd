"""What an operator meets when a port is taken, a dependency is down or a
setting is malformed: one line that names the setting and the address (never
the password) and says what to do, with the documented exit code (1 runtime,
2 configuration). Found by operating the demo from the docs alone.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.cli_runs import (
    BIN,
    CONFIG,
    PASSWORD,
    RUNTIME,
    assert_one_line,
    run_cli,
)

API_BASE = {"AUTH0_DOMAIN": "tenant.example.com", "AUTH0_API_AUDIENCE": "https://api"}


def _run(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {"DATA_DIR": str(cwd / "var"), "LOG_JSON": "false", **env}
    return run_cli(argv, env, cwd, timeout)


_one_line = assert_one_line


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on (here: this test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _source(tmp_path: Path, *tables: str) -> str:
    path = tmp_path / "source.db"
    with sqlite3.connect(path) as conn:
        for table in tables:
            conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, updated_at TIMESTAMP)")
    return f"sqlite:///{path}"


def test_api_serve_with_its_port_taken_exits_at_once_naming_it(taken_port, tmp_path):
    env = {**API_BASE, "API_BIND": f"127.0.0.1:{taken_port}"}
    started = time.monotonic()
    result = _run([str(BIN / "analytics-api"), "serve"], env, tmp_path, timeout=30)
    # Gunicorn alone retries five times and logs a dozen lines, none naming the setting.
    assert time.monotonic() - started < 15
    line = _one_line(result, RUNTIME, "API_BIND", f"127.0.0.1:{taken_port}", "in use")
    assert "free port" in line


def test_api_serve_with_a_bind_that_is_not_host_port_is_a_configuration_error(tmp_path):
    result = _run(
        [str(BIN / "analytics-api"), "serve"], {**API_BASE, "API_BIND": "nonsense"}, tmp_path
    )
    _one_line(result, CONFIG, "API_BIND", "host:port")


def test_etl_worker_with_its_metrics_port_taken_names_the_setting(taken_port, tmp_path):
    env = {"SOURCE_URL": _source(tmp_path, "orders"), "ETL_METRICS_PORT": str(taken_port)}
    env["TABLES_TO_SYNC"] = "orders"
    env["LOG_LEVEL"] = "WARNING"  # the start-up's own log lines (memory budget) aside
    result = _run([str(BIN / "analytics-etl"), "run"], env, tmp_path, timeout=60)
    _one_line(result, RUNTIME, "ETL_METRICS_PORT", str(taken_port), "in use")


def test_a_failed_sync_names_the_source_setting_and_what_to_check(tmp_path):
    env = {
        "SOURCE_URL": f"postgresql://analyst:{PASSWORD}@127.0.0.1:1/src",
        "RETRY_ATTEMPTS": "1",
        "LOG_LEVEL": "ERROR",  # the cycle's own log lines aside: the CLI's line
    }
    result = _run([str(BIN / "analytics-etl"), "sync"], env, tmp_path)
    assert result.returncode == RUNTIME, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("analytics-etl: sync failed:"), result.stderr
    assert "127.0.0.1" in last and "check SOURCE_URL" in last, last
    assert PASSWORD not in result.stderr + result.stdout


def test_a_sync_that_cannot_publish_names_the_store_settings(tmp_path):
    env = {
        "SOURCE_URL": _source(tmp_path, "orders"),
        "TABLES_TO_SYNC": "orders",
        "MODELS_DIR": "",  # no models over a one-table source
        "STORAGE_URL": "s3://bucket/prefix",
        "S3_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": PASSWORD,
        "S3_REGION": "us-east-1",
        "RETRY_ATTEMPTS": "1",
        "LOG_LEVEL": "ERROR",
    }
    result = _run([str(BIN / "analytics-etl"), "sync"], env, tmp_path)
    assert result.returncode == RUNTIME, result.stderr
    last = result.stderr.splitlines()[-1]
    assert "127.0.0.1:1" in last and "check STORAGE_URL" in last, last
    assert PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize("value", ["{bad", '[{"orders": 1}'])
def test_table_config_that_is_not_json_names_the_variable(value, tmp_path):
    env = {"TABLE_CONFIG": value}
    result = _run([str(BIN / "analytics-etl"), "check-config"], env, tmp_path)
    line = _one_line(result, CONFIG, "TABLE_CONFIG", "not valid JSON")
    assert "table_config" not in line  # pydantic's field name is not what the operator set


def test_etl_probe_names_a_table_missing_from_the_source(tmp_path):
    env = {"SOURCE_URL": _source(tmp_path, "orders"), "TABLES_TO_SYNC": "orders,ordres"}
    result = _run([str(BIN / "analytics-etl"), "check-config", "--probe"], env, tmp_path)
    assert result.returncode == RUNTIME, result.stdout + result.stderr
    [source] = [line for line in result.stdout.splitlines() if line.startswith("source:")]
    assert "FAILED" in source and "'ordres'" in source and "TABLES_TO_SYNC" in source, source

    env["TABLES_TO_SYNC"] = "orders"
    result = _run([str(BIN / "analytics-etl"), "check-config", "--probe"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_probe_names_the_identity_provider_url_it_cannot_reach(tmp_path):
    env = {
        "AUTH0_API_AUDIENCE": "https://api",
        "AUTH0_JWKS_URL": "http://127.0.0.1:1/keys.json",
        "AUTH0_ISSUER": "http://127.0.0.1:1/",
    }
    result = _run([str(BIN / "analytics-api"), "check-config", "--probe"], env, tmp_path)
    assert result.returncode == RUNTIME, result.stdout + result.stderr
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines()}
    assert "http://127.0.0.1:1/keys.json" in lines["jwks"], lines
    assert "http://127.0.0.1:1/.well-known/openid-configuration" in lines["issuer metadata"]


def test_every_read_only_command_says_which_state_it_read(tmp_path):
    env = {"SOURCE_URL": _source(tmp_path, "orders"), "TABLES_TO_SYNC": "orders"}
    env["MODELS_DIR"] = ""
    assert _run([str(BIN / "analytics-etl"), "sync"], env, tmp_path).returncode == 0
    where = f"state: sqlite:///{tmp_path / 'var' / 'etl_state.db'}"
    for argv in (["status"], ["dlq", "list"], ["commands"]):
        result = _run([str(BIN / "analytics-etl"), *argv, "--text"], env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == where, (argv, result.stdout)
    result = _run([str(BIN / "analytics-etl"), "commands", "--json"], env, tmp_path)
    assert json.loads(result.stdout)["state"] == where.removeprefix("state: ")


def test_every_line_the_running_etl_worker_logs_names_its_service(tmp_path):
    # The scheduler's thread logged its cycles without `service` (a context
    # variable bound in the main thread only).
    env = {
        "SOURCE_URL": _source(tmp_path, "orders"),
        "TABLES_TO_SYNC": "orders",
        "MODELS_DIR": "",
        "LOG_JSON": "true",
        "ETL_METRICS_PORT": "0",
        "SYNC_INTERVAL_SECONDS": "1",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "S3_", "AWS_"))}
    log = tmp_path / "etl.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(
            [str(BIN / "analytics-etl"), "run"],
            env={**base, "DATA_DIR": str(tmp_path / "var"), **env},
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "sync_cycle_finished" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(r["event"] == "table_synced" for r in records), records
    assert [r for r in records if r.get("service") != "etl-service"] == []
