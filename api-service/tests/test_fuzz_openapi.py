"""Property-based fuzzing of the HTTP API from its own OpenAPI schema
(schemathesis): whatever it sends, with or without a valid token, the API
answers without a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from testsupport.api_app import api_env, make_app_client

WHITELIST = {
    "policies": {"default": {"tables": ["inventory", "orders"], "named_queries": ["*"]}},
    "named_queries": {
        "low_stock": {
            "sql": "SELECT id, quantity FROM inventory WHERE quantity <= $threshold LIMIT $limit",
            "parameters": {
                "threshold": {"type": "integer", "minimum": 0, "default": 10},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            },
        }
    },
}


@pytest.fixture(scope="module")
def live_api(tmp_path_factory, issuer):
    env = api_env(
        tmp_path_factory.mktemp("fuzz"),
        issuer,
        WHITELIST,
        QUERY_TIMEOUT_SECONDS="2",
        MAX_RESULT_ROWS="50",
        DUCKDB_THREADS="1",
        DUCKDB_MEMORY_LIMIT="256MB",
    )
    with make_app_client(env) as client:
        yield str(client.base_url).rstrip("/")


@pytest.fixture(scope="module")
def token(issuer) -> str:
    return issuer.mint(sub="fuzzer", ttl=3600)


def _fuzz(base_url: str, headers: dict[str, str], max_examples: int) -> list[str]:
    """Drive every operation of the schema with Hypothesis; returns the operations fuzzed.

    (Schemathesis' pytest plugin does not support this pytest version yet, so the
    strategies are driven with `hypothesis.given` directly.)
    """
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events" and headers:
            continue  # an endless stream by design (tests/test_frontend_http.py covers it)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=base_url, headers=headers, checks=[not_a_server_error], timeout=30
            )

        run()
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    return fuzzed


def test_no_server_errors_with_a_valid_token(live_api, token):
    fuzzed = _fuzz(live_api, {"Authorization": f"Bearer {token}"}, max_examples=40)
    assert {"GET /query", "POST /query", "GET /queries", "POST /queries/{name}"} <= set(fuzzed)


def test_no_server_errors_without_a_token(live_api):
    assert _fuzz(live_api, {}, max_examples=10)
