"""What a caller restricted by a column policy can learn without reading a
value: answers to a hidden column and to a column that does not exist must be
the same (code and message), or error messages become an oracle on the names
GET /schema leaves out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testsupport.access_data import CLAIM, shop_env
from testsupport.api_app import make_app_client

ME = 7


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, issuer) -> Iterator[httpx.Client]:
    with make_app_client(shop_env(tmp_path_factory.mktemp("leaks"), issuer)) as client:
        yield client


def _error(api: httpx.Client, issuer, sql: str, fmt: str = "json") -> dict[str, Any]:
    token = issuer.mint(sub="customer-7", azp="shop-app", **{CLAIM: ME})
    response = api.post(
        "/query", json={"sql": sql, "format": fmt}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    return {"code": error["code"], "message": error["message"]}


@pytest.mark.parametrize(
    ("template", "hidden", "fmt"),
    [
        ("SELECT {} FROM customers", "api_secret", "json"),
        ("SELECT c.{} FROM customers c", "api_secret", "json"),
        ("SELECT id FROM orders WHERE {} > 0.5", "margin", "json"),
        ("SELECT id FROM orders ORDER BY {}", "margin", "arrow"),
        ("SELECT {} FROM customers", "API_SECRET", "ndjson"),
    ],
)
def test_a_hidden_column_is_answered_like_one_that_does_not_exist(
    api, issuer, template: str, hidden: str, fmt: str
):
    missing = "no_such_col"
    seen_hidden = _error(api, issuer, template.format(hidden), fmt)
    seen_missing = _error(api, issuer, template.format(missing), fmt)
    assert seen_hidden["code"] == seen_missing["code"] == "column_not_allowed"
    assert seen_hidden["message"].replace(hidden, "X") == seen_missing["message"].replace(
        missing, "X"
    )


def test_without_hidden_columns_an_unknown_column_stays_a_query_error(api, issuer):
    # products has no column policy: nothing to hide, DuckDB's own message stays.
    error = _error(api, issuer, "SELECT no_such_col FROM products")
    assert error["code"] == "query_error"
    assert "no_such_col" in error["message"]
