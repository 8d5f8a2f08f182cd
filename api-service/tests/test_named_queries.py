"""Named queries: listed per policy, parameters typed, validated and bound."""

from __future__ import annotations

import datetime as dt

import pytest

from analytics_shared.whitelist import NamedQuery, Whitelist, WhitelistError
from api_service.errors import ParameterError
from api_service.query.named_queries import bind_parameters, check_whitelist
from testsupport.api_app import api_env, make_app_client

QUERIES = {
    "low_stock": {
        "description": "Inventory at or below a threshold.",
        "sql": "SELECT id, warehouse, quantity FROM inventory WHERE quantity <= $threshold"
        " ORDER BY id LIMIT $limit",
        "parameters": {
            "threshold": {"type": "integer", "minimum": 0, "default": 10, "required": False},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
    },
    "orders_by_status": {
        "sql": "SELECT status, count(*) AS orders FROM orders WHERE created_at >= $since"
        " AND status = $status GROUP BY status",
        "parameters": {
            "since": {"type": "date"},
            "status": {"type": "string", "max_length": 40},
        },
    },
    "customer_emails": {"sql": "SELECT email FROM customers ORDER BY id"},
}
WHITELIST = {
    "policies": {
        "default": {"tables": ["inventory", "orders"], "named_queries": ["*"]},
        "dashboard": {
            "tables": [],
            "named_queries": ["low_stock"],
            "allow_ad_hoc_sql": False,
        },
    },
    "apps": {"dashboard-app": "dashboard"},
    "named_queries": QUERIES,
}


def _query(name: str) -> NamedQuery:
    return Whitelist.model_validate(WHITELIST).named_queries[name]


def test_parameters_are_typed_and_defaults_filled():
    assert bind_parameters(_query("low_stock"), {}) == {"threshold": 10, "limit": 100}
    bound = bind_parameters(_query("orders_by_status"), {"since": "2024-02-01", "status": "paid"})
    assert bound == {"since": dt.date(2024, 2, 1), "status": "paid"}


@pytest.mark.parametrize(
    ("name", "values", "fragment"),
    [
        ("low_stock", {"threshold": "5"}, "must be an integer"),
        ("low_stock", {"threshold": True}, "must be an integer"),
        ("low_stock", {"threshold": -1}, "at least 0"),
        ("low_stock", {"limit": 5000}, "at most 1000"),
        ("low_stock", {"limit": 2**70}, "out of range"),
        ("low_stock", {"evil": 1}, "unknown parameter"),
        ("orders_by_status", {"status": "paid"}, "'since' is required"),
        ("orders_by_status", {"since": "yesterday", "status": "x"}, "must be a date"),
        ("orders_by_status", {"since": "2024-01-01", "status": "x" * 41}, "longer than 40"),
        ("orders_by_status", {"since": "2024-01-01", "status": ["paid"]}, "must be a string"),
    ],
)
def test_bad_parameter_values_are_named(name, values, fragment):
    with pytest.raises(ParameterError, match=fragment):
        bind_parameters(_query(name), values)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"sql": "DELETE FROM inventory"}, "only SELECT"),
        ({"sql": "SELECT * FROM read_csv('x')"}, "read_csv"),
        ({"sql": "SELECT * FROM inventory WHERE id = $id"}, "uses parameters"),
        (
            {"sql": "SELECT 1", "parameters": {"n": {"type": "integer"}}},
            "uses parameters",
        ),
        (
            {
                "sql": "SELECT $n",
                "parameters": {"n": {"type": "integer", "default": "ten"}},
            },
            "default",
        ),
    ],
)
def test_the_whitelist_check_names_bad_named_queries(query, fragment):
    doc = {"policies": {"default": {"tables": ["*"]}}, "named_queries": {"bad_one": query}}
    with pytest.raises(WhitelistError, match=fragment) as err:
        check_whitelist(Whitelist.model_validate(doc))
    assert "bad_one" in str(err.value)


def test_unsafe_table_functions_cannot_be_allowed():
    doc = {"policies": {"default": {"tables": ["*"], "allowed_table_functions": ["read_csv"]}}}
    with pytest.raises(WhitelistError, match="read_csv"):
        check_whitelist(Whitelist.model_validate(doc))


def test_the_bundled_whitelist_passes_the_start_up_check():
    from analytics_shared.whitelist import load_whitelist

    check_whitelist(load_whitelist())


@pytest.fixture(scope="module")
def client(tmp_path_factory, issuer):
    env = api_env(tmp_path_factory.mktemp("named"), issuer, WHITELIST)
    with make_app_client(env) as c:
        yield c


def _auth(issuer, **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(**claims)}"}


def test_listing_shows_only_what_the_app_may_run(client, issuer):
    everything = client.get("/queries", headers=_auth(issuer, sub="nq-1")).json()
    assert [q["name"] for q in everything["queries"]] == sorted(QUERIES)
    low = next(q for q in everything["queries"] if q["name"] == "low_stock")
    assert low["parameters"]["limit"] == {
        "type": "integer",
        "required": True,
        "default": 100,
        "minimum": 1,
        "maximum": 1000,
        "description": "",
    }
    dashboard = client.get("/queries", headers=_auth(issuer, sub="nq-2", azp="dashboard-app"))
    assert [q["name"] for q in dashboard.json()["queries"]] == ["low_stock"]


def _low_stock(threshold: int, limit: int) -> list[dict[str, object]]:
    """What low_stock must answer over the test snapshot's inventory (ids 1..200,
    warehouse 'wh-' || id % 3, quantity id * 7 % 50), computed here independently."""
    rows = [
        {"id": i, "warehouse": f"wh-{i % 3}", "quantity": i * 7 % 50}
        for i in range(1, 201)
        if i * 7 % 50 <= threshold
    ]
    return rows[:limit]


def test_running_a_named_query_binds_parameters(client, issuer):
    r = client.post(
        "/queries/low_stock",
        json={"params": {"threshold": 3, "limit": 5}},
        headers=_auth(issuer, sub="nq-3", azp="dashboard-app"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["row_count"] == 5
    assert body["data"] == _low_stock(3, 5)


def test_defaults_fill_what_the_caller_leaves_out(client, issuer):
    dashboard = _auth(issuer, sub="nq-3", azp="dashboard-app")
    # no body at all: threshold 10 and limit 100 (44 rows qualify, under the limit)
    r = client.post("/queries/low_stock", headers=dashboard)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == _low_stock(10, 100) and r.json()["row_count"] == 44
    # an empty params object is the same
    r = client.post("/queries/low_stock", json={"params": {}}, headers=dashboard)
    assert r.json()["data"] == _low_stock(10, 100)
    # one given, the other defaulted: 124 rows qualify, the default limit keeps 100
    r = client.post("/queries/low_stock", json={"params": {"threshold": 30}}, headers=dashboard)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == _low_stock(30, 100) and r.json()["row_count"] == 100
    # over GET the query string carries the values, typed the same way
    r = client.get("/queries/low_stock", params={"limit": "7"}, headers=dashboard)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == _low_stock(10, 7)


def test_date_and_string_parameters_select_the_right_rows(client, issuer):
    # orders: ids 1..200, status ['new', 'paid', 'shipped'][1 + id % 3], created 2024-01-01 + id days
    paid_since_february = sum(1 for i in range(31, 201) if i % 3 == 1)
    r = client.post(
        "/queries/orders_by_status",
        json={"params": {"since": "2024-02-01", "status": "paid"}},
        headers=_auth(issuer, sub="nq-4"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [{"status": "paid", "orders": paid_since_february}]
    r = client.get(
        "/queries/orders_by_status",
        params={"since": "2024-02-01", "status": "paid"},
        headers=_auth(issuer, sub="nq-4"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [{"status": "paid", "orders": paid_since_february}]


def test_string_parameters_are_bound_never_interpolated(client, issuer):
    r = client.post(
        "/queries/orders_by_status",
        json={"params": {"since": "2024-01-01", "status": "paid' OR '1'='1"}},
        headers=_auth(issuer, sub="nq-4"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"] == []


def test_refusals(client, issuer):
    dashboard = _auth(issuer, sub="nq-5", azp="dashboard-app")
    r = client.post("/queries/orders_by_status", json={"params": {}}, headers=dashboard)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_query"
    r = client.post("/queries/no_such_query", headers=dashboard)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_query"
    r = client.post("/queries/low_stock", json={"params": {"limit": "all"}}, headers=dashboard)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameters"
    assert "limit" in r.json()["error"]["message"]
    r = client.post("/queries/low_stock", json={"sql": "SELECT 1"}, headers=dashboard)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.get("/query", params={"q": "SELECT 1"}, headers=dashboard)
    assert r.status_code == 403 and r.json()["error"]["code"] == "ad_hoc_sql_not_allowed"
    r = client.get("/queries", headers=_auth(issuer, sub="nq-6", scopes="read:schema"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"


def test_start_up_stops_on_a_bad_whitelist_naming_the_problem(tmp_path, auth_env):
    from api_service.main import create_app
    from api_service.settings import ApiSettings

    bad = tmp_path / "whitelist.json"
    bad.write_text('{"policies": {"default": {"tables": ["inventory; DROP"]}}}')
    settings = ApiSettings(**auth_env, QUERY_WHITELIST_PATH=str(bad), DATA_DIR=str(tmp_path))
    with pytest.raises(WhitelistError, match="policies/default/tables/0"):
        create_app(settings)
    bad.write_text(
        '{"policies": {"default": {"tables": ["*"]}},'
        ' "named_queries": {"oops": {"sql": "COPY inventory TO \'x.csv\'"}}}'
    )
    with pytest.raises(WhitelistError, match="oops"):
        create_app(settings)
