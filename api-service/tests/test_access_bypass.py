"""Row filters and column policies against queries that try to get around them.

The `shop` policy (testsupport/access_data.py) lets a customer see only their
orders and their customer row; `api_secret` and `margin` are hidden, `email`
is a keyed hash and `note` NULL. Every query below is either refused with the
asserted code, or answered with exactly the rows and columns the `Oracle`
gives for the same SQL: a plain DuckDB database holding only what that
customer may see, built by hand (no part of the API's rewrite).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testsupport.access_data import (
    CLAIM,
    Oracle,
    arrow_rows,
    masked_hash,
    shop_rows,
)
from testsupport.access_data import shop_env as shop_api_env
from testsupport.api_app import make_app_client
from testsupport.api_server import ApiServer

ME = 7
OTHER = 12


@pytest.fixture(scope="module")
def shop_env(tmp_path_factory: pytest.TempPathFactory, issuer) -> dict[str, str]:
    return shop_api_env(tmp_path_factory.mktemp("shop"), issuer)


@pytest.fixture(scope="module")
def api(shop_env) -> Iterator[httpx.Client]:
    with make_app_client(shop_env) as client:
        yield client


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(ME)


def _headers(issuer, sub: str = "customer-7", app: str = "shop-app", **claims: Any) -> dict:
    claims = {CLAIM: ME, **claims} if app == "shop-app" and "no_claim" not in claims else claims
    claims.pop("no_claim", None)
    return {"Authorization": f"Bearer {issuer.mint(sub=sub, azp=app, **claims)}"}


def _query(api: httpx.Client, headers: dict, sql: str, params: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"sql": sql, "format": "arrow"}
    if params is not None:
        body["params"] = params
    return api.post("/query", json=body, headers=headers)


def _canonical(rows: list[dict[str, Any]]) -> list[tuple]:
    return sorted((tuple(sorted(r.items())) for r in rows), key=repr)


# Answered: the API's rows equal the oracle's for the same SQL (order-insensitive).
SAME_AS_ORACLE = [
    "SELECT * FROM orders",
    'SELECT * FROM "ORDERS"',
    "SELECT * FROM main.orders",
    'SELECT * FROM main."Customers"',
    "SELECT o.* FROM orders AS o",
    "SELECT x.* FROM orders x(a, b, c)",
    "FROM orders SELECT *",
    "FROM orders",
    "TABLE customers",
    "SELECT orders FROM orders",
    "SELECT to_json(o) AS j FROM orders o",
    "SELECT * EXCLUDE (note) FROM orders",
    "SELECT * REPLACE (total_amount * 2 AS total_amount) FROM orders",
    "SELECT COLUMNS(*) FROM customers",
    "SELECT COLUMNS('.*') FROM customers",
    "SELECT COLUMNS(lambda c: c LIKE '%e%') FROM customers",
    "SELECT (SELECT count(*) FROM orders) AS n",
    "SELECT id FROM products WHERE id IN (SELECT customer_id FROM orders)",
    "SELECT status, count(*) AS n FROM orders GROUP BY status"
    " HAVING count(*) >= (SELECT min(id) - 6 FROM customers)",
    "SELECT id FROM products ORDER BY (SELECT max(total_amount) FROM orders), id",
    "SELECT p.id FROM products p JOIN customers c ON c.id IN (SELECT customer_id FROM orders)",
    "SELECT c.id, l.n FROM customers c,"
    " LATERAL (SELECT count(*) AS n FROM orders o WHERE o.customer_id = c.id) l",
    "SELECT p.id, l.n FROM products p,"
    " LATERAL (SELECT count(*) AS n FROM orders o WHERE o.customer_id = p.id) l",
    "WITH x AS (SELECT * FROM orders) SELECT count(*) AS n, sum(total_amount) AS s FROM x",
    "WITH a AS (SELECT customer_id FROM orders), b AS (SELECT * FROM a) SELECT DISTINCT * FROM b",
    "WITH RECURSIVE r(n, c) AS (SELECT 1, (SELECT count(*) FROM orders)"
    " UNION ALL SELECT n + 1, c FROM r WHERE n < 3) SELECT * FROM r",
    "WITH RECURSIVE r(id) AS (SELECT min(id) FROM orders UNION"
    " SELECT (SELECT min(o.id) FROM orders o WHERE o.id > r.id) FROM r WHERE r.id IS NOT NULL)"
    " SELECT count(*) AS n FROM r",
    "SELECT customer_id FROM orders UNION SELECT id FROM customers",
    "SELECT * FROM orders UNION ALL BY NAME SELECT * FROM customers",
    "SELECT id FROM products EXCEPT SELECT customer_id FROM orders",
    "SELECT id FROM products INTERSECT SELECT customer_id FROM orders",
    "SELECT id, sum(total_amount) OVER (ORDER BY id) AS running FROM orders",
    "SELECT id, count(*) OVER () AS total FROM orders",
    "PIVOT orders ON status IN ('new', 'paid', 'shipped', 'cancelled')"
    " USING count(*) GROUP BY customer_id",
    "UNPIVOT (SELECT id, name, region FROM customers) ON name, region INTO NAME k VALUE v",
    "SELECT * FROM orders NATURAL JOIN customers",
    "SELECT * FROM orders o JOIN customers c USING (id)",
    "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT * FROM customers c FULL OUTER JOIN orders o ON c.id = o.customer_id",
    "SELECT x FROM unnest((SELECT list(id) FROM orders)) t(x)",
    "SELECT count(*) AS n FROM range(0, 700) r(i) JOIN orders o ON o.id = r.i",
    "SELECT count(*) AS n FROM orders a, orders b WHERE a.id <> b.id",
    "SELECT list(id ORDER BY id) AS ids FROM orders",
    "SELECT [x * 2 FOR x IN (SELECT list(id) FROM orders)] AS doubled",
    "SELECT list_transform((SELECT list(total_amount) FROM orders), lambda x: x + 1) AS l",
    "SELECT struct_pack(a := o.id, b := o.note, c := o.customer_id) AS s FROM orders o",
    "SELECT t.* FROM orders t WHERE t.customer_id <> 7",
    "SELECT * FROM orders WHERE customer_id = 12",
    "SELECT * FROM orders WHERE true OR customer_id = 12",
    "SELECT DISTINCT ON (status) status, id FROM orders ORDER BY status, id",
    "SELECT status, count(*) AS n FROM orders GROUP BY ROLLUP (status)",
    "SELECT id FROM orders QUALIFY row_number() OVER (ORDER BY id) <= 3",
    "SELECT * FROM (VALUES (7), (12)) v(c) JOIN orders o ON o.customer_id = v.c",
    "SELECT count(*) AS n FROM orders TABLESAMPLE 100%",
    "SELECT count(*) AS n FROM orders WHERE CAST(note AS INTEGER) > 0",
    "SELECT count(*) AS n FROM orders"
    " WHERE CASE WHEN customer_id <> 7 THEN error('leak') ELSE true END",
    "SELECT count(*) AS n FROM orders WHERE id IN (SELECT unnest(range(1, 601)))",
    "SELECT email, email = (SELECT min(email) FROM customers) AS same FROM customers",
    "SELECT max(id) AS m FROM orders GROUP BY ALL",
    "SELECT * FROM v_product_prices WHERE unit_price > 50",
    "SELECT (SELECT c FROM (SELECT count(*) AS c FROM orders) AS orders) AS n",
    "SELECT * FROM (SELECT * FROM (SELECT * FROM customers) AS orders) AS customers",
]


@pytest.mark.parametrize("sql", SAME_AS_ORACLE)
def test_answered_with_exactly_the_permitted_rows_and_columns(api, issuer, oracle, sql):
    response = _query(api, _headers(issuer), sql)
    assert response.status_code == 200, response.text
    expected = oracle.rows(sql)
    assert _canonical(arrow_rows(response.content)) == _canonical(expected)


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT count(*) AS n FROM orders WHERE total_amount > ?", [100]),
        ("SELECT id FROM orders WHERE total_amount > ? AND status <> ?", [10, "new"]),
        ("SELECT id FROM orders WHERE total_amount > $min", {"min": 100}),
    ],
)
def test_caller_parameters_still_bind_beside_the_claims(api, issuer, oracle, sql, params):
    response = _query(api, _headers(issuer), sql, params)
    assert response.status_code == 200, response.text
    assert _canonical(arrow_rows(response.content)) == _canonical(oracle.rows(sql, params))


REFUSED = [
    ("SELECT api_secret FROM customers", "column_not_allowed"),
    ("SELECT c.api_secret FROM customers c", "column_not_allowed"),
    ("SELECT margin FROM orders", "column_not_allowed"),
    ("SELECT sum(margin) FROM orders", "column_not_allowed"),
    ("SELECT id FROM customers WHERE api_secret LIKE 'sk_0%'", "column_not_allowed"),
    ("SELECT id FROM orders ORDER BY margin", "column_not_allowed"),
    ("SELECT * FROM orders o JOIN customers c ON c.api_secret = o.note", "column_not_allowed"),
    ("SELECT COLUMNS('api_.*') FROM customers", "query_error"),  # no such visible column
    ("SELECT rowid FROM orders", "column_not_allowed"),
    ("SELECT * FROM orders o(a, b, c, d, e, f, g)", "query_error"),  # 7 aliases, 6 columns
    ("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders", "cte_name_not_allowed"),
    ('WITH "Orders" AS (SELECT 1 AS x) SELECT * FROM products', "cte_name_not_allowed"),
    (
        "WITH RECURSIVE customers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM customers"
        " WHERE n < 2) SELECT * FROM customers",
        "cte_name_not_allowed",
    ),
    (
        "SELECT * FROM (WITH customers AS (SELECT 1) SELECT * FROM customers)",
        "cte_name_not_allowed",
    ),
    ("SELECT * FROM v_customer_totals", "model_not_allowed"),
    ("SELECT * FROM order_status_daily", "model_not_allowed"),
    (
        "SELECT * FROM products WHERE id IN (SELECT customer_id FROM v_customer_totals)",
        "model_not_allowed",
    ),
    ("SELECT * FROM orders AS __rls_orders", "reserved_name"),
    ("WITH __rls_x AS (SELECT 1) SELECT * FROM __rls_x", "reserved_name"),
    ("SELECT json_serialize_plan('SELECT * FROM orders')", "function_not_allowed"),
    ("SELECT * FROM query('SELECT * FROM orders')", "function_not_allowed"),
    ("SELECT * FROM query_table('orders')", "function_not_allowed"),
    ("SELECT getvariable('x')", "function_not_allowed"),
    ("SELECT * FROM duckdb_columns()", "function_not_allowed"),
    ("SELECT * FROM pragma_table_info('customers')", "function_not_allowed"),
    ("SELECT current_setting('temp_directory')", "function_not_allowed"),
    ("DESCRIBE customers", "unsupported"),
    ("SUMMARIZE orders", "unsupported"),
    ("SHOW TABLES", "unsupported"),
    ("SELECT * FROM memory.main.orders", "table_not_allowed"),
    ("SELECT * FROM information_schema.columns", "table_not_allowed"),
    ("SELECT * FROM 'orders.parquet'", "file_access"),
    ("PREPARE p AS SELECT * FROM orders", "not_a_select"),
    ("CREATE MACRO m() AS TABLE SELECT * FROM orders", "not_a_select"),
    ("SELECT count(*) FROM orders AT (VERSION => 1)", "unsupported"),
]


@pytest.mark.parametrize(("sql", "code"), REFUSED)
def test_refused_with_a_clear_code(api, issuer, sql, code):
    response = _query(api, _headers(issuer), sql)
    assert response.status_code in (400, 403), response.text
    assert response.json()["error"]["code"] == code, response.text


def test_a_reserved_parameter_name_is_refused(api, issuer):
    response = _query(
        api, _headers(issuer), "SELECT $__rls_mask_inner AS k", {"__rls_mask_inner": 1}
    )
    assert response.json()["error"]["code"] == "reserved_name"


def test_a_hidden_column_is_refused_in_a_stream_too(api, issuer):
    response = api.post(
        "/query",
        json={"sql": "SELECT api_secret FROM customers", "format": "ndjson"},
        headers=_headers(issuer),
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "column_not_allowed"


def test_masked_values_are_the_keyed_hash_and_never_the_raw_value(api, issuer):
    response = _query(api, _headers(issuer), "SELECT id, email FROM customers")
    (row,) = arrow_rows(response.content)
    raw = next(c["email"] for c in shop_rows()["customers"] if c["id"] == ME)
    assert row == {"id": ME, "email": masked_hash(raw)}
    assert row["email"] != raw


def test_a_token_without_the_claim_is_refused_before_anything_runs(api, issuer):
    headers = _headers(issuer, sub="no-claim", no_claim=True)
    response = _query(api, headers, "SELECT count(*) FROM orders")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "missing_claim"
    named = api.post("/queries/my_orders", json={}, headers=headers)
    assert (named.status_code, named.json()["error"]["code"]) == (403, "missing_claim")
    # A query that touches no restricted table needs no claim.
    assert _query(api, headers, "SELECT count(*) FROM products").status_code == 200


def test_an_object_claim_is_refused(api, issuer):
    headers = _headers(issuer, sub="object-claim", **{CLAIM: {"id": 7}})
    response = _query(api, headers, "SELECT count(*) FROM orders")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "invalid_claim")


def _named(api, headers, name, params=None) -> httpx.Response:
    body: dict[str, Any] = {"format": "arrow"}
    if params is not None:
        body["params"] = params
    return api.post(f"/queries/{name}", json=body, headers=headers)


def test_a_claim_bound_parameter_comes_from_the_token(api, issuer, oracle):
    response = _named(api, _headers(issuer), "my_orders")
    assert response.status_code == 200, response.text
    expected = oracle.rows(
        "SELECT id, status, total_amount FROM orders WHERE customer_id = 7 ORDER BY id"
    )
    assert arrow_rows(response.content) == expected and expected


@pytest.mark.parametrize("value", [OTHER, ME, None, "12 OR true"])
def test_a_caller_cannot_set_a_claim_bound_parameter(api, issuer, value):
    response = _named(api, _headers(issuer), "my_orders", {"customer_id": value})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "claim_bound_parameter"


def test_queries_lists_where_a_parameter_comes_from(api, issuer):
    listed = api.get("/queries", headers=_headers(issuer)).json()["queries"]
    spec = next(q for q in listed if q["name"] == "my_orders")["parameters"]["customer_id"]
    assert spec["from_claim"] == CLAIM


def test_named_queries_are_row_filtered_too(api, issuer, oracle):
    other = _named(api, _headers(issuer), "orders_of", {"customer_id": OTHER})
    assert other.status_code == 200 and arrow_rows(other.content) == []
    mine = _named(api, _headers(issuer), "orders_of", {"customer_id": ME})
    expected = oracle.rows(
        "SELECT id, customer_id, total_amount FROM orders WHERE customer_id = 7 ORDER BY id"
    )
    assert arrow_rows(mine.content) == expected
    count = _named(api, _headers(issuer), "order_count")
    assert arrow_rows(count.content) == [{"n": len(expected)}]
    refused = _named(api, _headers(issuer), "customer_totals")
    assert refused.json()["error"]["code"] == "model_not_allowed"


def test_one_callers_rewritten_query_and_cache_never_serve_another(api, issuer):
    sql = "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id"
    seen = {}
    for _ in range(3):  # warm: the guard's, the rewrite's and the result cache's entries
        for customer in (ME, OTHER):
            headers = _headers(issuer, sub=f"customer-{customer}", **{CLAIM: customer})
            response = _query(api, headers, sql)
            assert response.status_code == 200
            rows = arrow_rows(response.content)
            assert [r["customer_id"] for r in rows] == [customer]
            seen.setdefault(customer, rows)
            assert rows == seen[customer]
    assert response.headers["X-Cache"] == "hit"


def test_the_same_user_under_another_policy_gets_that_policys_answer(api, issuer):
    sql = "SELECT count(*) AS n FROM orders"
    shop = _query(api, _headers(issuer, sub="both"), sql)
    staff = _query(api, _headers(issuer, sub="both", app="staff-app"), sql)
    assert arrow_rows(staff.content) == [{"n": 600}]
    assert arrow_rows(shop.content)[0]["n"] < 600


def test_a_filter_with_a_subquery_and_a_string_claim(api, issuer):
    rows = shop_rows()
    north = {c["id"] for c in rows["customers"] if c["region"] == "north"}
    expected = sorted(o["id"] for o in rows["orders"] if o["customer_id"] in north)
    headers = _headers(issuer, sub="region-lead", app="regional-app", region="north")
    response = _query(api, headers, "SELECT id FROM orders ORDER BY id")
    assert response.status_code == 200, response.text
    assert [r["id"] for r in arrow_rows(response.content)] == expected and expected
    # Its customers are not filtered, only narrowed to two columns.
    hidden = _query(api, headers, "SELECT name FROM customers")
    assert hidden.json()["error"]["code"] == "column_not_allowed"


@pytest.mark.parametrize(
    "sql",
    [
        # A CTE named like the table the filter reads must not replace it.
        "WITH products AS (SELECT i AS id, 'x' AS name FROM range(100) r(i))"
        " SELECT DISTINCT customer_id FROM orders",
        "SELECT DISTINCT customer_id FROM (WITH products AS (SELECT 3 AS id, 'x' AS name)"
        " SELECT * FROM orders)",
        "WITH RECURSIVE products(id, name) AS (SELECT 1, 'x' UNION ALL"
        " SELECT id + 1, 'x' FROM products WHERE id < 40) SELECT DISTINCT customer_id FROM orders",
    ],
)
def test_a_cte_cannot_stand_in_for_a_table_the_filter_reads(api, issuer, sql):
    rows = shop_rows()
    product = rows["products"][2]
    mine = sorted({o["customer_id"] for o in rows["orders"] if o["customer_id"] == product["id"]})
    headers = _headers(issuer, sub="by-product", app="product-app", product=product["name"])
    response = _query(api, headers, sql)
    if response.status_code == 200:
        assert sorted(r["customer_id"] for r in arrow_rows(response.content)) == mine
    else:
        assert response.json()["error"]["code"] == "cte_name_not_allowed", response.text
    plain = _query(api, headers, "SELECT DISTINCT customer_id FROM orders")
    assert [r["customer_id"] for r in arrow_rows(plain.content)] == mine


def test_schema_shows_only_what_the_caller_may_see(api, issuer):
    schema = api.get("/schema", headers=_headers(issuer)).json()
    customers = schema["tables"]["customers"]
    assert [c["name"] for c in customers["columns"]] == ["id", "name", "email", "region"]
    assert {"name": "email", "type": "VARCHAR", "masked": "hash"} in customers["columns"]
    assert customers["row_count"] is None and customers["row_filter"] is True
    orders = [c["name"] for c in schema["tables"]["orders"]["columns"]]
    assert "margin" not in orders
    assert set(schema["models"]) == {"v_product_prices"}
    staff = api.get("/schema", headers=_headers(issuer, app="staff-app")).json()
    assert staff["tables"]["orders"]["row_count"] == 600
    assert set(staff["models"]) == {"v_customer_totals", "order_status_daily", "v_product_prices"}


def test_row_filters_hold_under_gunicorn(shop_env, issuer, tmp_path):
    api = ApiServer(shop_env, workers=2, log_path=tmp_path / "api.log").start(ready_timeout=90)
    try:
        headers = _headers(issuer)
        response = httpx.post(
            api.url + "/query",
            json={"sql": "SELECT DISTINCT customer_id FROM orders", "format": "arrow"},
            headers=headers,
            timeout=30,
        )
        assert arrow_rows(response.content) == [{"customer_id": ME}]
        secret = httpx.post(
            api.url + "/query", json={"sql": "SELECT api_secret FROM customers"}, headers=headers
        )
        assert secret.json()["error"]["code"] == "column_not_allowed"
    finally:
        api.stop()
