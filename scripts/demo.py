"""`make demo` / `make demo-check`: the whole platform on embedded defaults.

A SQLite demo source, state in a SQLite file, snapshots in a local folder and
a local development token issuer stand in for SQL Server, PostgreSQL, S3 and
Auth0. `--check` runs one sync and one authenticated query, then exits.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from api_service.dev.issuer import DevIssuer
from etl_service.demo_source import create_demo_source, mutate_demo_rows

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AUDIENCE = "https://analytics-api.local"
TABLES = "inventory,products,orders,transactions,customers"
CONSOLE_BUILT = ROOT / "api-service" / "api_service" / "console" / "static" / "index.html"


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the API exited early (code {proc.returncode})")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("demo: the API did not become ready in time")


def _stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="one sync, one query, then exit")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    data_dir = ROOT / "var" / ("demo-check" if args.check else "demo")
    # Start clean: a store left by an earlier run would be served first.
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    source_url = f"sqlite:///{data_dir / 'source.db'}"
    engine = create_demo_source(source_url)
    issuer = DevIssuer(audience=AUDIENCE, sign_in=True).start()
    port = _free_port(args.port)
    etl_port = _free_port(9108)
    api_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "SOURCE_URL": source_url,
        "TABLES_TO_SYNC": TABLES,
        "SYNC_INTERVAL_SECONDS": "5",
        **issuer.settings_env(),
        "SNAPSHOT_POLL_SECONDS": "2",
        "ETL_METRICS_PORT": str(etl_port),
        "API_BIND": f"127.0.0.1:{port}",
        # The console signs in with the development issuer, as it would with Auth0,
        # and hands admin actions to the worker through its state database.
        "CONSOLE_AUTH0_CLIENT_ID": "demo-console",
        "CONSOLE_LOGIN_URL": issuer.url,
        "CONSOLE_POLL_SECONDS": "2",
        "ETL_STATE_DATABASE_URL": f"sqlite:///{data_dir / 'etl_state.db'}",
        "WEB_CONCURRENCY": "2",
        "LOG_JSON": os.environ.get("LOG_JSON", "false"),
        # Scheduler and request chatter would scroll the banner away.
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
    }
    # `source var/demo/demo.env` points analytics-etl at the demo's state.
    cli_env = {k: env[k] for k in ("DATA_DIR", "SOURCE_URL", "TABLES_TO_SYNC")}
    env_file = data_dir / "demo.env"
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in cli_env.items()))
    children: list[subprocess.Popen] = []  # type: ignore[type-arg]
    stop_mutating = threading.Event()
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_requested.set())
    try:
        if args.check:
            subprocess.run([BIN / "analytics-etl", "sync"], env=env, check=True)
        else:
            children.append(
                subprocess.Popen([BIN / "analytics-etl", "run"], env=env, start_new_session=True)
            )
        api = subprocess.Popen([BIN / "analytics-api", "serve"], env=env, start_new_session=True)
        children.append(api)
        _wait_ready(api_url, api)
        # read:status too, so the demo's operator can try GET /status.
        token = issuer.mint(
            sub="demo-user", scopes="read:analytics read:schema read:status", ttl=12 * 3600
        )
        # v_inventory_summary is a model the ETL builds into every snapshot.
        sql = "SELECT * FROM v_inventory_summary"
        response = httpx.get(
            api_url + "/query",
            params={"q": sql},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        body = response.json()
        if response.status_code != 200 or not body.get("success") or not body.get("data"):
            print(f"demo: query failed: {response.status_code} {response.text}", file=sys.stderr)
            return 1
        if args.check:
            print(
                f"demo-check ok: {body['row_count']} rows from data version {body['data_version']}"
            )
            return 0

        def mutate() -> None:
            rng = random.Random()
            while not stop_mutating.wait(3):
                mutate_demo_rows(engine, rng)

        threading.Thread(target=mutate, daemon=True).start()
        curl = (
            f"curl -s -H 'Authorization: Bearer {token}' "
            f"{shlex.quote(api_url + '/query')} --get --data-urlencode {shlex.quote('q=' + sql)}"
        )
        console = (
            f"{api_url}/console/   (sign in as analyst, or as operator for admin actions)"
            if CONSOLE_BUILT.is_file()
            else f"{api_url}/console/   (not built: needs Node.js and npm, then `make console`)"
        )
        banner_file = data_dir / "banner.txt"
        banner = f"""
  Analytics platform demo is running (Ctrl-C stops everything)

  Console:    {console}
  API:        {api_url}   (OpenAPI docs at {api_url}/docs, health at {api_url}/health)
  Token:      {token}

  Try:
  {curl}

  ETL health: http://127.0.0.1:{etl_port}/health   (Prometheus metrics at /metrics)
  Pipeline status (ETL and API): {api_url}/status with the same token

  A few inventory and order rows change every 3 s; a sync runs every 5 s.

  The CLI on the demo's state, from another terminal:
  source {env_file.relative_to(ROOT)} && .venv/bin/analytics-etl status

  This banner again: cat {banner_file.relative_to(ROOT)}
"""
        banner_file.write_text(banner)
        print(banner, flush=True)
        while not stop_requested.wait(1):
            for child in children:
                if child.poll() is not None:
                    print(f"demo: {child.args[0]} exited with {child.returncode}", file=sys.stderr)
                    return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop_mutating.set()
        for child in reversed(children):
            _stop(child)
        issuer.stop()
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
