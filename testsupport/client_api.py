"""A real API process for the client libraries' tests (Python, Node, browser).

`ClientTestApi` publishes a small snapshot into a local store, writes a
whitelist made for the clients' tests, and runs `analytics-api serve`
(Gunicorn + Uvicorn, as users run it) trusting a local `DevIssuer`. It also
starts a second API with an empty store, which answers 503 `no_data`, for the
retry tests.

Run as a module it is the fixture server for the Node tests:

    python -m testsupport.client_api [--cors-origin ORIGIN ...]

prints one JSON line (URLs and ready-made tokens), then reads commands from
stdin, one per line, answering each with one JSON line:

    publish   publish a new snapshot; answers {"data_version": ...} once the
              API serves it
    token SUB [AZP]
              mint a token for SUB (scopes read:analytics read:schema)

and stops everything at end of input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from analytics_shared.logging_config import configure_logging
from api_service.dev.issuer import DevIssuer
from testsupport.api_app import publish_test_snapshot, write_whitelist
from testsupport.api_server import ApiServer

__all__ = ["LIMITED_APP", "RATE_LIMIT", "ClientTestApi", "client_whitelist"]

AUDIENCE = "https://analytics-api.test"
LIMITED_APP = "limited-app"
RATE_LIMIT = {"requests": 3, "window_seconds": 2}

BIG_NUMBERS_SQL = (
    "SELECT 9007199254740993::BIGINT AS big, 42::BIGINT AS small,"
    " (-9223372036854775807)::BIGINT AS most_negative,"
    " 170141183460469231731687303715884105727::HUGEINT AS huge,"
    " 12345678901234567.89::DECIMAL(38,2) AS amount, 0.1::DECIMAL(3,2) AS tenth,"
    " $label AS label"
)


def client_whitelist() -> dict[str, Any]:
    """The default policy, a rate-limited app, and named queries with big numbers."""
    return {
        "version": 1,
        "default_policy": "default",
        "unknown_apps": "default",
        "policies": {
            "default": {
                "tables": ["inventory", "products", "orders"],
                "named_queries": ["*"],
                "allow_ad_hoc_sql": True,
            },
            "limited": {
                "tables": ["inventory"],
                "named_queries": ["low_stock"],
                "rate_limit": RATE_LIMIT,
            },
        },
        "apps": {LIMITED_APP: "limited"},
        "named_queries": {
            "low_stock": {
                "description": "Inventory rows at or below a quantity threshold.",
                "sql": (
                    "SELECT id, product_id, warehouse, quantity FROM inventory"
                    " WHERE quantity <= $threshold ORDER BY quantity, id LIMIT $limit"
                ),
                "parameters": {
                    "threshold": {"type": "integer", "minimum": 0, "default": 10},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
            },
            "big_numbers": {
                "description": "Values past 2^53 and exact decimals.",
                "sql": BIG_NUMBERS_SQL,
                "parameters": {"label": {"type": "string", "default": "x", "max_length": 20}},
            },
        },
    }


class ClientTestApi:
    """The API under Gunicorn over a test snapshot, plus an empty one (503)."""

    def __init__(
        self,
        root: Path,
        cors_origins: list[str] | None = None,
        workers: int = 2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.store = root / "store"
        # The console's sign-in runs against this issuer (CONSOLE_LOGIN_URL).
        self.issuer = DevIssuer(audience=AUDIENCE, sign_in=True)
        self.extra_env = extra_env or {}
        self.cors_origins = cors_origins or []
        self.workers = workers
        self.api: ApiServer | None = None
        self.empty_api: ApiServer | None = None

    def _env(self, store: Path, data: Path) -> dict[str, str]:
        whitelist = write_whitelist(self.root / "whitelist.json", client_whitelist())
        env = {
            **self.issuer.settings_env(),
            "STORAGE_URL": store.as_uri(),
            "DATA_DIR": str(data),
            "QUERY_WHITELIST_PATH": str(whitelist),
            "SNAPSHOT_POLL_SECONDS": "0.3",
            "RATE_LIMIT_REQUESTS": "100000",
            "REDIS_URL": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "LOG_LEVEL": "WARNING",
            "CONSOLE_AUTH0_CLIENT_ID": "console-test",
            "CONSOLE_LOGIN_URL": self.issuer.url,
            **self.extra_env,
        }
        if self.cors_origins:
            env["CORS_ORIGINS"] = ",".join(self.cors_origins)
        return env

    def start(self) -> ClientTestApi:
        self.issuer.start()
        self.manifest_version = publish_test_snapshot(self.store).version
        empty_store = self.root / "empty-store"
        empty_store.mkdir(parents=True, exist_ok=True)
        try:
            self.api = ApiServer(
                self._env(self.store, self.root / "var"),
                workers=self.workers,
                log_path=self.root / "api.log",
            ).start()
            self.empty_api = ApiServer(
                self._env(empty_store, self.root / "var-empty"),
                workers=1,
                log_path=self.root / "api-empty.log",
            ).start(require_data=False)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.api, self.empty_api):
            if server is not None:
                server.stop()
        self.issuer.stop()

    def __enter__(self) -> ClientTestApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    def token(self, sub: str | None = None, **claims: Any) -> str:
        """A token for a fresh user (so rate-limit windows never overlap)."""
        return self.issuer.mint(sub=sub or f"client-test-{uuid.uuid4().hex[:12]}", **claims)

    def data_version(self) -> str:
        return str(httpx.get(self.url + "/health", timeout=10).json()["data_version"])

    def publish(self, timeout: float = 30.0) -> str:
        """Publish a new snapshot and wait until the API serves it."""
        before = self.data_version()
        version = publish_test_snapshot(self.store, rows=250).version
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.data_version() == version != before:
                return version
            time.sleep(0.1)
        raise TimeoutError(f"the API did not switch to {version} in {timeout}s")

    def describe(self) -> dict[str, Any]:
        assert self.empty_api is not None
        return {
            "url": self.url,
            "empty_url": self.empty_api.url,
            "token": self.token(),
            "schema_less_token": self.token(scopes="read:analytics"),
            "limited_token": self.token(azp=LIMITED_APP),
            "expired_token": self.token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
            "rate_limit": RATE_LIMIT,
            "data_version": self.data_version(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cors-origin", action="append", default=[])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    # stdout carries the JSON protocol only; publishing logs go to stderr.
    configure_logging("WARNING", service="client-test-api")
    with (
        tempfile.TemporaryDirectory(prefix="client-api-") as tmp,
        ClientTestApi(Path(tmp), cors_origins=args.cors_origin, workers=args.workers) as api,
    ):
        print(json.dumps(api.describe()), flush=True)
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "publish":
                answer: dict[str, Any] = {"data_version": api.publish()}
            elif command == "token":
                azp = rest[1] if len(rest) > 1 else None
                answer = {"token": api.token(rest[0], **({"azp": azp} if azp else {}))}
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
