"""Bad settings and unreachable dependencies, for both services: exactly one
line on stderr, the documented exit code (1 runtime, 2 configuration), no
traceback, never the password. `analytics-api serve` with a bad setting exits
instead of crash-looping; `check-config --probe` names the one dependency
that cannot be reached.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from testsupport.cli_runs import (
    BIN,
    CONFIG,
    PASSWORD,
    RUNTIME,
    assert_one_line,
    run_cli,
)

_run, _assert_one_line = run_cli, assert_one_line


UNREACHABLE_PG = f"postgresql://analyst:{PASSWORD}@127.0.0.1:1/state"

ETL_CASES = {
    "state database unreachable": (
        ["status"],
        {"DATABASE_URL": UNREACHABLE_PG},
        RUNTIME,
        ["DATABASE_URL", "127.0.0.1:1"],
    ),
    "state database not a URL": (
        ["status"],
        {"DATABASE_URL": "nonsense"},
        CONFIG,
        ["DATABASE_URL"],
    ),
    "source not a URL": (["sync"], {"SOURCE_URL": "notaurl"}, CONFIG, ["SOURCE_URL"]),
    "no source": (["sync"], {}, CONFIG, ["SOURCE_URL", "MSSQL_HOST"]),
    "store folder unusable": (
        ["versions"],
        {"STORAGE_URL": "file:///proc/nope"},
        CONFIG,
        ["STORAGE_URL", "/proc/nope"],
    ),
    "store unreachable": (
        ["versions"],
        {
            "STORAGE_URL": "s3://bucket/prefix",
            "S3_ENDPOINT_URL": "http://127.0.0.1:1",
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": PASSWORD,
        },
        RUNTIME,
        ["STORAGE_URL", "127.0.0.1:1"],
    ),
    "state file missing": (["status"], {}, CONFIG, ["no state database", "etl_state.db"]),
    "a number that is not": (
        ["status"],
        {"SYNC_INTERVAL_SECONDS": "often"},
        CONFIG,
        ["SYNC_INTERVAL_SECONDS"],
    ),
    "unknown table": (
        ["backfill", "nope"],
        {"SOURCE_URL": f"postgresql://analyst:{PASSWORD}@127.0.0.1:1/src"},
        CONFIG,
        ["nope", "TABLES_TO_SYNC"],
    ),
}


@pytest.mark.parametrize("case", sorted(ETL_CASES))
def test_etl_errors_are_one_line(case, tmp_path):
    argv, env, code, names = ETL_CASES[case]
    env = {"DATA_DIR": str(tmp_path / "var"), "LOG_JSON": "false", **env}
    result = _run([str(BIN / "analytics-etl"), *argv], env, tmp_path)
    _assert_one_line(result, code, *names)
    assert not (tmp_path / "var" / "etl_state.db").exists()  # nothing created by reading


def test_postgres_scheme_works_and_status_names_the_state(pg_url, tmp_path):
    url = pg_url.replace("postgresql+psycopg://", "postgres://")
    result = _run([str(BIN / "analytics-etl"), "status"], {"DATABASE_URL": url}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"state": "postgresql+psycopg://' in result.stdout


def test_verbose_shows_the_traceback(tmp_path):
    env = {"DATABASE_URL": UNREACHABLE_PG, "LOG_JSON": "false"}
    result = _run([str(BIN / "analytics-etl"), "--verbose", "status"], env, tmp_path)
    assert result.returncode == RUNTIME
    assert "Traceback" in result.stderr and PASSWORD not in result.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    env = {**os.environ, "LOG_JSON": "false", "DATA_DIR": str(tmp_path / "var")}
    history = tmp_path / "var" / "store" / "history"
    history.mkdir(parents=True)
    for n in range(2000):  # ~150 kB of listing: more than a pipe holds, so `head` cuts it
        (history / f"analytics_2026{n:04d}.db").write_bytes(b"x")
    result = subprocess.run(
        f"{BIN / 'analytics-etl'} versions --text | head -1",
        shell=True,  # the pipe is the point
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == "", result.stderr
    assert result.stdout.startswith("store: ")


API_BASE = {"AUTH0_DOMAIN": "tenant.example.com", "AUTH0_API_AUDIENCE": "https://api"}

API_CASES = {
    "no audience": ({"AUTH0_API_AUDIENCE": ""}, ["AUTH0_API_AUDIENCE"]),
    "domain with a path": ({"AUTH0_DOMAIN": "https://acme.auth0.com/x"}, ["AUTH0_DOMAIN"]),
    "issuer without slash": (
        {"AUTH0_JWKS_URL": "https://idp/jwks", "AUTH0_ISSUER": "https://idp"},
        ["AUTH0_ISSUER", "https://idp/"],
    ),
    "bad algorithm": ({"AUTH0_ALGORITHMS": "HS256"}, ["AUTH0_ALGORITHMS"]),
    "store folder unusable": ({"STORAGE_URL": "file:///proc/nope"}, ["STORAGE_URL"]),
    "whitelist missing": ({"QUERY_WHITELIST_PATH": "/nonexistent/wl.json"}, ["wl.json"]),
    # Lake mode: the replicator cannot start without its catalog (the API served
    # 503 "starting" forever), and a 512 MB host cannot hold it beside a worker.
    "lake without a catalog": ({"PUBLISH_MODE": "lake"}, ["LAKE_CATALOG_URL"]),
    "lake host at 512 MB": (
        {
            "PUBLISH_MODE": "lake",
            "LAKE_CATALOG_URL": "postgresql://lake@127.0.0.1:1/catalog",
            "MEMORY_LIMIT": "512MB",
        },
        ["MEMORY_LIMIT", "lake replicator"],
    ),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_configuration_errors_are_one_line(case, tmp_path):
    env, names = API_CASES[case]
    env = {**API_BASE, "DATA_DIR": str(tmp_path / "var"), **env}
    result = _run([str(BIN / "analytics-api"), "check-config"], env, tmp_path)
    _assert_one_line(result, CONFIG, *names)


def test_auth0_domain_with_scheme_and_slash_is_normalised(tmp_path):
    env = {**API_BASE, "AUTH0_DOMAIN": "https://acme.eu.auth0.com/"}
    code = "from api_service.settings import ApiSettings; s = ApiSettings(); print(s.issuer)"
    result = _run([sys.executable, "-c", code], env, tmp_path)
    assert result.stdout.strip() == "https://acme.eu.auth0.com/", result.stderr


def test_serve_with_a_bad_setting_exits_before_gunicorn(tmp_path):
    env = {**API_BASE, "AUTH0_API_AUDIENCE": "", "PORT": "0", "DATA_DIR": str(tmp_path / "v")}
    started = time.monotonic()
    result = _run([str(BIN / "analytics-api"), "serve"], env, tmp_path, timeout=30)
    assert time.monotonic() - started < 15
    _assert_one_line(result, CONFIG, "AUTH0_API_AUDIENCE")


def test_api_probe_names_the_unreachable_dependency(issuer, tmp_path, redis_url):
    env = {
        **issuer.settings_env(),
        "DATA_DIR": str(tmp_path / "var"),
        "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0",
    }
    result = _run([str(BIN / "analytics-api"), "check-config", "--probe"], env, tmp_path)
    assert result.returncode == RUNTIME, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["jwks", "issuer metadata", "store", "redis"]
    failed = [line for line in lines if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("redis: FAILED") and "REDIS_URL" in failed[0]
    assert PASSWORD not in result.stdout + result.stderr

    env["REDIS_URL"] = redis_url
    result = _run([str(BIN / "analytics-api"), "check-config", "--probe"], env, tmp_path)
    assert result.returncode == 0, result.stdout


def test_etl_probe_names_the_unreachable_dependency(tmp_path):
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as conn:  # the probe also looks for TABLES_TO_SYNC
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    env = {
        "SOURCE_URL": f"sqlite:///{source}",
        "TABLES_TO_SYNC": "orders",
        "DATABASE_URL": UNREACHABLE_PG,
        "DATA_DIR": str(tmp_path / "var"),
        "LOG_JSON": "false",
    }
    result = _run([str(BIN / "analytics-etl"), "check-config", "--probe"], env, tmp_path)
    assert result.returncode == RUNTIME, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["source", "state database", "store"]
    [failed] = [line for line in lines if "FAILED" in line]
    assert failed.startswith("state database: FAILED") and "DATABASE_URL" in failed
    assert PASSWORD not in result.stdout + result.stderr


def test_lake_probe_reaches_the_catalog_through_the_lake_process(pg_url, tmp_path):
    """In lake mode `check-config --probe` starts the lake process (LAKE_PYTHON)
    and reads the catalog, the way the ETL and the replicator will."""
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    env = {
        "SOURCE_URL": f"sqlite:///{source}",
        "TABLES_TO_SYNC": "orders",
        "DATABASE_URL": pg_url,
        "DATA_DIR": str(tmp_path / "var"),
        "STORAGE_URL": (tmp_path / "store").as_uri(),
        "PUBLISH_MODE": "lake",
        "LOG_JSON": "false",
    }

    def lake_line(extra: dict[str, str]) -> tuple[int, str, str]:
        result = _run(
            [str(BIN / "analytics-etl"), "check-config", "--probe"], {**env, **extra}, tmp_path
        )
        lines = result.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == [
            "source",
            "state database",
            "store",
            "lake",
        ]
        return result.returncode, lines[-1], result.stdout + result.stderr

    code, line, _ = lake_line({})  # the state database is the catalog; nothing committed yet
    assert code == 0 and line.startswith("lake: ok:") and "no lake yet" in line, line

    unreachable = {"LAKE_CATALOG_URL": UNREACHABLE_PG}
    code, line, everything = lake_line(unreachable)
    assert code == RUNTIME and line.startswith("lake: FAILED: LakeUnavailable"), line
    assert "LAKE_CATALOG_URL" in line and "Connection refused" in line
    assert PASSWORD not in everything and "Traceback" not in everything

    code, line, _ = lake_line({"LAKE_PYTHON": str(tmp_path / "no-such-python")})
    assert code == RUNTIME and line.startswith("lake: FAILED: ConfigurationError"), line
    assert "LAKE_PYTHON" in line
