"""Row filters fail closed on a claim of the wrong JSON type (issue 12, review 2).

DuckDB casts a bound value to whatever its context asks for: a claim `true`
compared with an INTEGER column matched customer 1, `"7"` and `7.0` matched
customer 7, a list `[true, 7]` matched customers 1 and 7. Each such claim must
be a 403 `invalid_claim` with no rows; the right-typed claim still answers
exactly the oracle's rows. Real app, real snapshot, real signed tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testsupport.access_data import CLAIM, SHOP_WHITELIST, Oracle, arrow_rows, shop_env
from testsupport.api_app import make_app_client

ME = 7
ORDERS_OF_ME = "SELECT id FROM orders WHERE customer_id = 7 ORDER BY id"
WHITELIST: dict[str, Any] = json.loads(json.dumps(SHOP_WHITELIST))
WHITELIST["policies"].update(
    {
        "several": {
            "tables": ["orders"],
            "row_filters": {"orders": "list_contains(claim('ids'), customer_id)"},
        },
        "by_note": {"tables": ["orders"], "row_filters": {"orders": "note = claim('note')"}},
        "since": {"tables": ["orders"], "row_filters": {"orders": "created_at >= claim('since')"}},
        # DuckDB cannot tell the claim's type here: refused until the filter says it.
        "untyped": {
            "tables": ["orders"],
            "row_filters": {"orders": "customer_id IN (SELECT unnest(claim('ids')))"},
        },
        "cast": {
            "tables": ["orders"],
            "row_filters": {
                "orders": "customer_id IN (SELECT unnest(CAST(claim('ids') AS INTEGER[])))"
            },
        },
        "two_types": {
            "tables": ["orders"],
            "row_filters": {"orders": "customer_id = claim('x') OR status = claim('x')"},
        },
    }
)
WHITELIST["apps"].update({name + "-app": name for name in WHITELIST["policies"]})


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, issuer) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("claim-types")
    env = shop_env(root, issuer)
    (root / "whitelist.json").write_text(json.dumps(WHITELIST))
    with make_app_client(env) as client:
        yield client


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(ME)


def _query(api: httpx.Client, issuer, app: str, sql: str, **claims: Any) -> httpx.Response:
    token = issuer.mint(sub=f"claims-{app}", azp=app, **claims)
    return api.post(
        "/query",
        json={"sql": sql, "format": "arrow"},
        headers={"Authorization": f"Bearer {token}"},
    )


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.content[:300]
    assert response.json()["error"]["code"] == "invalid_claim"
    assert "data" not in response.json()


@pytest.mark.parametrize(
    ("app", "claims"),
    [
        ("shop-app", {CLAIM: True}),  # bool vs INTEGER: matched customer 1
        ("shop-app", {CLAIM: "7"}),  # string vs INTEGER: matched customer 7
        ("shop-app", {CLAIM: 7.0}),  # float vs INTEGER: matched customer 7
        ("shop-app", {CLAIM: 2**40}),  # past INTEGER's range
        ("shop-app", {CLAIM: [7]}),  # list vs INTEGER
        ("by_note-app", {"note": 123}),  # int vs VARCHAR: cast the column
        ("regional-app", {"region": 1}),  # int vs VARCHAR, inside the filter's subquery
        ("several-app", {"ids": [True, 7]}),  # a bool in a list of INTEGER
        ("several-app", {"ids": ["7"]}),
        ("several-app", {"ids": 7}),  # a scalar where a list is needed
        ("since-app", {"since": 20240301}),  # a number for a TIMESTAMP
        ("since-app", {"since": "last week"}),  # not ISO 8601
        ("two_types-app", {"x": 7}),  # must fit INTEGER and VARCHAR at once
        ("untyped-app", {"ids": [7]}),  # a type DuckDB cannot infer: never bound
    ],
    ids=[
        "bool_for_int",
        "string_for_int",
        "float_for_int",
        "int_out_of_range",
        "list_for_int",
        "int_for_varchar",
        "int_for_varchar_in_subquery",
        "bool_in_int_list",
        "string_in_int_list",
        "scalar_for_list",
        "number_for_timestamp",
        "text_for_timestamp",
        "two_types",
        "untyped",
    ],
)
def test_a_claim_of_the_wrong_type_is_refused_with_no_rows(api, issuer, app, claims):
    _refused(_query(api, issuer, app, "SELECT id FROM orders ORDER BY id", **claims))


def test_the_right_types_still_answer_exactly_the_permitted_rows(api, issuer, oracle):
    mine = oracle.rows(ORDERS_OF_ME)
    assert mine
    ok = _query(api, issuer, "shop-app", "SELECT id FROM orders ORDER BY id", **{CLAIM: ME})
    assert ok.status_code == 200 and arrow_rows(ok.content) == mine
    for app, claims in [("several-app", {"ids": [ME]}), ("cast-app", {"ids": [ME]})]:
        r = _query(api, issuer, app, "SELECT id FROM orders ORDER BY id", **claims)
        assert r.status_code == 200 and arrow_rows(r.content) == mine, (app, r.text)
    since = _query(
        api, issuer, "since-app", "SELECT count(*) AS n FROM orders", since="2024-10-01T00:00:00"
    )
    expected = oracle.raw["orders"]
    n = sum(1 for o in expected if o["created_at"].isoformat() >= "2024-10-01T00:00:00")
    assert since.status_code == 200 and arrow_rows(since.content) == [{"n": n}]
    note = _query(api, issuer, "by_note-app", "SELECT count(*) AS n FROM orders", note="123")
    assert note.status_code == 200
    assert arrow_rows(note.content) == [{"n": sum(1 for o in expected if o["note"] == "123")}]


@pytest.mark.parametrize("value", ["7", 7.0, True], ids=["string", "float", "bool"])
def test_a_claim_bound_named_query_parameter_is_strict_too(api, issuer, value):
    token = issuer.mint(sub="named-claims", azp="shop-app", **{CLAIM: value})
    r = api.post(
        "/queries/my_orders", json={"format": "arrow"}, headers={"Authorization": f"Bearer {token}"}
    )
    _refused(r)
