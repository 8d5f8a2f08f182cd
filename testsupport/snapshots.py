"""Helpers for the snapshot-lifecycle tests: the ETL CLI as a process, reading
back what the store says is current (verified), small in-process publishers,
and a client that records every query the API answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import sqlalchemy as sa

from analytics_shared.manifest import MANIFEST_KEY, Manifest
from analytics_shared.object_store import ObjectStore, open_store
from analytics_shared.snapshot_file import fetch_verified, probe
from etl_service.publisher import Publisher
from testsupport.publishing import publish_database

__all__ = [
    "ETL",
    "QueryLoad",
    "TinyWarehouse",
    "fetch_current_verified",
    "run_etl",
    "snapshot_rows",
    "source_rows",
    "store_from_env",
    "wait_for",
]

ETL = str(Path(sys.executable).parent / "analytics-etl")


def run_etl(
    args: list[str], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ETL, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store_from_env(env: dict[str, str]) -> ObjectStore:
    return open_store(
        env["STORAGE_URL"],
        endpoint_url=env.get("S3_ENDPOINT_URL"),
        region=env.get("S3_REGION"),
        access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
    )


def fetch_current_verified(store: ObjectStore, workdir: Path) -> tuple[Manifest, Path]:
    """The manifest and a plain local copy of the snapshot it names.

    Fails (SnapshotFileError) unless the object's size and sha256 match the
    manifest and the file opens with the row counts the manifest states.
    """
    manifest = Manifest.from_json(store.get_bytes(MANIFEST_KEY)[0])
    workdir.mkdir(parents=True, exist_ok=True)
    plain = fetch_verified(store, manifest, Path(tempfile.mkdtemp(dir=workdir)) / "snapshot.db")
    con = duckdb.connect(str(plain), read_only=True)
    try:
        probe(con, manifest)
    finally:
        con.close()
    return manifest, plain


def source_rows(engine: sa.Engine, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY id"))
        return list(result.keys()), [tuple(r) for r in result]


def snapshot_rows(path: Path, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cols = ", ".join(f'"{c}"' for c in columns)
        return con.execute(f'SELECT {cols} FROM "{table}" ORDER BY id').fetchall()
    finally:
        con.close()


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until `predicate()` is truthy; generous deadlines, no tight timing."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what or predicate} (last {last!r})"
    )


class TinyWarehouse:
    """A one-table working DuckDB, published with `testsupport.publishing`.

    Version i has every `inventory.quantity` equal to i, so any answer can be
    checked against the version that claims to have produced it.
    """

    def __init__(self, workdir: Path, store: ObjectStore, rows: int = 200) -> None:
        self.workdir = workdir
        self.rows = rows
        self.publisher = Publisher(store, grace_seconds=0)
        self.con = duckdb.connect(str(workdir / "tiny.duckdb"))
        self.con.execute("CREATE OR REPLACE TABLE inventory (id INTEGER, quantity INTEGER)")

    def publish(self, quantity: int) -> Manifest:
        self.con.execute("DELETE FROM inventory")
        self.con.execute(
            "INSERT INTO inventory SELECT i, ? FROM range(?) t(i)", [quantity, self.rows]
        )
        return publish_database(
            self.con, self.publisher.store, self.workdir / "outgoing", publisher=self.publisher
        )

    def close(self) -> None:
        self.con.close()


@dataclass
class QueryLoad:
    """Client threads that query the API until stopped, recording every answer."""

    url: str
    tokens: list[str]
    sql: str = "SELECT max(quantity) AS q, min(quantity) AS lo, count(*) AS n FROM inventory"
    results: list[tuple[int, str | None, dict[str, Any] | None, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    r = client.get("/query", params={"q": self.sql})
                    body = (
                        r.json()
                        if r.headers.get("content-type", "").startswith("application/json")
                        else None
                    )
                    version = body.get("data_version") if isinstance(body, dict) else None
                    row = body["data"][0] if r.status_code == 200 and body else None
                    entry = (r.status_code, version, row, "" if r.status_code == 200 else r.text)
                except httpx.HTTPError as exc:
                    entry = (0, None, None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.results.append(entry)

    def start(self) -> QueryLoad:
        for token in self.tokens:
            t = threading.Thread(target=self._client, args=(token,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def snapshot(self) -> list[tuple[int, str | None, dict[str, Any] | None, str]]:
        with self._lock:
            return list(self.results)
