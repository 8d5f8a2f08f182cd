"""Row filters and column policies, pinned directly (no server): what a policy
compiles to, which claims are accepted, and what the rewritten SQL returns when
run on a real DuckDB database holding the tables (`main.orders`, ...)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest
from pydantic import SecretStr

from analytics_shared.manifest import ColumnSchema, Manifest, ModelInfo, TableInfo
from analytics_shared.whitelist import AppPolicy, ColumnPolicy, Whitelist, WhitelistError
from api_service.access import rewrite as rw
from api_service.access.rules import (
    MASK_INNER_PARAM,
    MASK_OUTER_PARAM,
    AccessRules,
    check_mask_secret,
    claim_param,
    claim_value,
    mask_keys,
    rules_for,
)
from api_service.errors import ColumnNotAllowed, InvalidClaim, MissingClaim, QueryRejected

SECRET = "a-mask-secret-of-some-length"
ORDERS = ["id", "customer_id", "status", "margin", "note"]
CUSTOMERS = ["id", "name", "email"]


def _manifest(version: str = "v1", models: dict[str, list[str]] | None = None) -> Manifest:
    def info(columns: list[str]) -> TableInfo:
        return TableInfo(
            row_count=1, columns=[ColumnSchema(name=c, type="VARCHAR") for c in columns]
        )

    return Manifest(
        version=version,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        snapshot_key="s",
        sha256="0" * 64,
        size=1,
        tables={"orders": info(ORDERS), "Customers": info(CUSTOMERS), "products": info(["id"])},
        models={
            name: ModelInfo(kind="view", sql_sha256="0" * 64, depends_on=deps)
            for name, deps in (models or {}).items()
        },
    )


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE orders (id INTEGER, customer_id INTEGER, status VARCHAR,"
        " margin DOUBLE, note VARCHAR)"
    )
    con.execute(
        "INSERT INTO orders VALUES (1, 7, 'paid', 0.5, 'n1'), (2, 8, 'new', 0.6, 'n2'),"
        " (3, 7, 'new', 0.7, NULL)"
    )
    con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR, email VARCHAR)")
    con.execute("INSERT INTO customers VALUES (7, 'Ada', 'ada@x'), (8, 'Bo', 'bo@x')")
    con.execute("CREATE TABLE products (id INTEGER)")
    return con


SHOP = AppPolicy(
    tables=["orders", "Customers", "products"],
    row_filters={"Orders": "customer_id = claim('cid')", "customers": "id = claim('cid')"},
    column_policies={
        "orders": ColumnPolicy(
            allowed_columns=["ID", "customer_id", "status", "note"],
            masked_columns={"Note": "null"},
        ),
        "customers": ColumnPolicy(masked_columns={"email": "hash"}),
    },
)


def _rules(policy: AppPolicy = SHOP) -> AccessRules:
    rules = rules_for(policy)
    assert rules is not None
    return rules


def _refusal(sql: str, rules: AccessRules, manifest: Manifest | None = None) -> str:
    """The code `rewrite` refuses the query with."""
    with pytest.raises(QueryRejected) as err:
        rw.rewrite(sql, rules, manifest or _manifest())
    return err.value.code


def _run(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    policy: AppPolicy = SHOP,
    claims: dict[str, Any] | None = None,
    params: Any = None,
    manifest: Manifest | None = None,
) -> list[tuple[Any, ...]]:
    rewritten = rw.rewrite(sql, _rules(policy), manifest or _manifest())
    values = {c: claim_value(claims or {"cid": 7}, c) for c in rewritten.claims}
    bound = rw.bind(rewritten, params, values, mask_keys(SECRET))
    return con.execute(rewritten.sql, bound).fetchall()


def _keyed(value: str) -> str:
    key = SECRET.encode()
    inner = hmac.new(key, b"column-mask inner", hashlib.sha256).hexdigest()
    outer = hmac.new(key, b"column-mask outer", hashlib.sha256).hexdigest()
    digest = hashlib.sha256((inner + value).encode()).hexdigest()
    return hashlib.sha256((outer + digest).encode()).hexdigest()


# -- compiling a policy ---------------------------------------------------------------


def test_a_policy_without_rules_compiles_to_none_and_rules_are_compiled_once():
    assert rules_for(AppPolicy(tables=["orders"])) is None
    rules = rules_for(SHOP)
    assert rules is rules_for(SHOP)  # cached for this policy object
    assert rules_for(SHOP.model_copy()) == rules  # an equal policy compiles alike
    assert rules is not None and sorted(rules.by_table) == ["customers", "orders"]
    orders = rules.by_table["orders"]
    assert orders.allowed == {"id", "customer_id", "status", "note"}
    assert orders.masked == (("note", "null"),) and orders.claims == ("cid",)
    customers = rules.by_table["customers"]
    assert customers.allowed is None and customers.masked == (("email", "hash"),)
    assert rules.uses_hash_masks and orders.column_restricted
    only_filter = rules_for(
        AppPolicy(tables=["t"], row_filters={"t": "x = claim('a') OR y = claim('a')"})
    )
    assert only_filter is not None
    rule = only_filter.by_table["t"]
    assert rule.claims == ("a",) and not rule.column_restricted  # one claim, named once
    assert not only_filter.uses_hash_masks


def test_the_compiled_rules_cache_holds_257_policies_then_starts_over(monkeypatch):
    """A bound on memory: policies are few (one per whitelist application),
    but a whitelist reload makes new policy objects each time."""
    from api_service.access import rules as rules_module

    monkeypatch.setattr(rules_module, "_compiled", {})
    policies = [AppPolicy(tables=["t"], row_filters={"t": f"x = {i}"}) for i in range(258)]
    compiled = [rules_for(p) for p in policies[:257]]
    assert len(rules_module._compiled) == 257
    assert all(rules_for(p) is c for p, c in zip(policies[:257], compiled, strict=True))
    rules_for(policies[257])  # the 258th: the cache starts over with it
    assert len(rules_module._compiled) == 1
    assert rules_for(policies[0]) is not compiled[0]  # compiled again


def test_what_get_schema_shows_of_a_restricted_table():
    rules = _rules()
    columns = [ColumnSchema(name=c, type="INTEGER") for c in ["ID", "margin", "Note", "status"]]
    assert rules.by_table["orders"].describe(columns) == [
        {"name": "ID", "type": "INTEGER"},
        {"name": "Note", "type": "INTEGER", "masked": "null"},
        {"name": "status", "type": "INTEGER"},
    ]
    email = [ColumnSchema(name="email", type="INTEGER")]
    assert rules.by_table["customers"].describe(email) == [
        {"name": "email", "type": "VARCHAR", "masked": "hash"}  # a hash is text
    ]
    assert rules.by_table["orders"].hidden(("ID", "Margin")) == {"margin"}
    assert rules.by_table["customers"].hidden(("email",)) == frozenset()


@pytest.mark.parametrize(
    "text",
    [
        "id > 0 GROUP BY id",
        "id > 0 HAVING count(*) > 1",
        "id > 0 QUALIFY row_number() OVER () = 1",
        "id > 0 ORDER BY id",
        "id > 0 LIMIT 1",
        "true UNION SELECT 1",
        "true; DROP TABLE orders",
        "id > 0; SELECT 1",
        "id IN (WITH c AS (SELECT 1 AS x) SELECT x FROM c)",
        "id IN (SELECT id FROM other.orders)",
        "getenv('HOME') = 'x'",
        "claim(1) = id",
        "claim() = id",
        "claim('') = id",
        "claim('a', 'b') = id",
        "claim(name) = id",
        "",
    ],
)
def test_a_filter_that_is_not_one_safe_boolean_expression_stops_start_up(text):
    with pytest.raises(WhitelistError, match="the row filter of 't'"):
        rules_for(AppPolicy(tables=["t"], row_filters={"t": text}))


def test_a_filter_may_read_other_tables_of_the_data(con):
    policy = AppPolicy(
        tables=["orders", "customers"],
        row_filters={"orders": "customer_id IN (SELECT id FROM customers WHERE name = claim('n'))"},
    )
    # main.customers, not the caller's CTE of that name.
    sql = "WITH customers AS (SELECT 8 AS id, 'Ada' AS name) SELECT id FROM orders ORDER BY id"
    assert _run(con, sql, policy, {"n": "Ada"}) == [(1,), (3,)]
    # Qualified names inside the filter keep their own qualifier; only the
    # filtered table's bare columns are tied to it.
    aliased = AppPolicy(
        tables=["orders", "customers"],
        row_filters={
            "orders": "customer_id IN (SELECT c.id FROM customers c WHERE c.name = claim('n'))"
        },
    )
    assert _run(con, "SELECT id FROM orders ORDER BY id", aliased, {"n": "Bo"}) == [(2,)]


def test_a_filter_names_its_tables_columns_bare_or_by_the_tables_name(con):
    """`o.customer_id` in a filter bound to the caller's table `o`: the caller
    chose the filter's outcome and saw every row. A qualifier other than the
    table's own name stops start-up; `orders.customer_id` is the table's column."""
    caller = (
        "SELECT orders.id FROM (SELECT 99 AS customer_id) AS o, orders"
        " WHERE o.customer_id = 99 ORDER BY orders.id"
    )
    for qualified in ("o.customer_id", "main.orders.customer_id", "x.y.z"):
        with pytest.raises(WhitelistError, match=f"names '{qualified}'"):
            rules_for(AppPolicy(tables=["orders"], row_filters={"orders": f"{qualified} = 1"}))
    own = AppPolicy(tables=["orders"], row_filters={"Orders": "ORDERS.customer_id = claim('cid')"})
    assert _run(con, caller, own, {"cid": 99}) == []
    assert _run(con, caller, own, {"cid": 7}) == [(1,), (3,)]
    assert _run(con, "SELECT id FROM orders ORDER BY id", own, {"cid": 8}) == [(2,)]


# -- the claims a request binds ---------------------------------------------------------


def test_claim_values_must_be_present_and_scalar():
    good = {"s": "x", "i": 1, "f": 1.5, "b": False, "l": ["a", 2]}
    assert [claim_value(good, k) for k in good] == ["x", 1, 1.5, False, ["a", 2]]
    for claims in ({}, {"c": None}):
        with pytest.raises(MissingClaim, match="no 'c' claim"):
            claim_value(claims, "c")
    for bad in ({"k": 1}, [{"k": 1}], [[1]]):
        with pytest.raises(InvalidClaim, match="'c' claim must be"):
            claim_value({"c": bad}, "c")


def test_claim_parameters_are_reserved_names_of_the_claim_digest():
    digest = hashlib.sha256(b"https://x/customer_id").hexdigest()[:16]
    assert claim_param("https://x/customer_id") == "__rls_claim_" + digest


def test_hash_masks_need_a_secret_of_sixteen_characters():
    hashed = Whitelist(policies={"default": SHOP, "plain": AppPolicy(tables=["t"])})
    for secret in (None, SecretStr(""), SecretStr("x" * 15)):
        with pytest.raises(WhitelistError, match=r"policies \['default'\] mask columns"):
            check_mask_secret(hashed, secret)
    check_mask_secret(hashed, SecretStr("x" * 16))
    check_mask_secret(Whitelist(policies={"plain": AppPolicy(tables=["t"])}), None)
    # Only a keyed hash needs the secret: "null" masks alone do not.
    nulls = AppPolicy(
        tables=["t"], column_policies={"t": ColumnPolicy(masked_columns={"a": "null"})}
    )
    check_mask_secret(Whitelist(policies={"nulls": nulls}), None)
    hashes = AppPolicy(
        tables=["t"], column_policies={"t": ColumnPolicy(masked_columns={"a": "hash"})}
    )
    with pytest.raises(WhitelistError, match=r"policies \['hashes'\] mask columns"):
        check_mask_secret(Whitelist(policies={"hashes": hashes, "nulls": nulls}), None)


def test_the_mask_keys_are_derived_from_the_secret():
    keys = mask_keys(SECRET)
    key = SECRET.encode()
    assert keys == {
        MASK_INNER_PARAM: hmac.new(key, b"column-mask inner", hashlib.sha256).hexdigest(),
        MASK_OUTER_PARAM: hmac.new(key, b"column-mask outer", hashlib.sha256).hexdigest(),
    }


# -- what the rewritten query returns ----------------------------------------------------


def test_a_caller_sees_only_permitted_rows_and_columns(con):
    assert _run(con, "SELECT * FROM orders ORDER BY id") == [
        (1, 7, "paid", None),
        (3, 7, "new", None),
    ]
    assert _run(con, 'SELECT o.id FROM main."ORDERS" AS o ORDER BY 1', claims={"cid": 8}) == [(2,)]
    assert _run(con, "SELECT name, email FROM customers") == [("Ada", _keyed("ada@x"))]
    # A table the policy does not restrict is read as it is.
    assert _run(con, "SELECT count(*) FROM products") == [(0,)]


def test_every_reference_is_rewritten_wherever_it_sits(con):
    sql = (
        "WITH mine AS (SELECT id FROM orders) "
        "SELECT (SELECT count(*) FROM orders) AS n, m.id FROM mine m "
        "JOIN orders o2 ON o2.id = m.id WHERE m.id IN (SELECT id FROM orders) "
        "UNION ALL SELECT 0, id FROM orders ORDER BY 2, 1"
    )
    assert _run(con, sql) == [(0, 1), (2, 1), (0, 3), (2, 3)]


def test_caller_parameters_bind_beside_the_claims(con):
    assert _run(con, "SELECT id FROM orders WHERE status = ?", params=["new"]) == [(3,)]
    assert _run(con, "SELECT id FROM orders WHERE status = $1", params={"1": "paid"}) == [(1,)]
    assert _run(con, "SELECT id FROM orders WHERE status = $s", params={"s": "paid"}) == [(1,)]
    # Only positional placeholders are renamed: a key the SQL has no
    # placeholder for keeps its name (DuckDB's error names the caller's key).
    named = rw.rewrite("SELECT id FROM orders WHERE status = $s", _rules(), _manifest())
    bound = rw.bind(named, {"s": "paid", "1": "x"}, {"cid": 7}, mask_keys(SECRET))
    assert bound["1"] == "x" and bound["s"] == "paid"


def test_bind_passes_the_callers_parameters_through_when_nothing_is_added():
    plain = rw.RewrittenQuery("SELECT 1", (), False, False, frozenset())
    params = {"x": 1}
    assert rw.bind(plain, params, {}, {}) is params
    masked = rw.RewrittenQuery("SELECT 1", (), True, False, frozenset())
    assert rw.bind(masked, None, {}, {"k": "v"}) == {"k": "v"}
    with pytest.raises(QueryRejected) as err:
        rw.bind(masked, {"__RLS_claim_x": 1}, {}, {"k": "v"})
    assert err.value.code == "reserved_name"


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("WITH orders AS (SELECT 1) SELECT * FROM orders", "cte_name_not_allowed"),
        ("WITH RECURSIVE Orders AS (SELECT 1 UNION ALL SELECT 1) SELECT 1", "cte_name_not_allowed"),
        ("WITH v_totals AS (SELECT 1) SELECT 1", "cte_name_not_allowed"),
        ("WITH __rls_x AS (SELECT 1) SELECT 1", "reserved_name"),
        ("WITH RECURSIVE __RLS_r AS (SELECT 1 UNION ALL SELECT 1) SELECT 1", "reserved_name"),
        ("SELECT * FROM orders AS __rls_o", "reserved_name"),
        ("SELECT * FROM products AS __rls_p", "reserved_name"),
        ("SELECT $__rls_claim_x", "reserved_name"),
        ("SELECT * FROM v_totals", "model_not_allowed"),
        ("SELECT * FROM V_NESTED", "model_not_allowed"),
    ],
)
def test_refused_with_a_clear_code(sql, code):
    rules = _rules()
    manifest = _manifest(
        models={"v_totals": ["orders"], "v_nested": ["V_Totals"], "v_p": ["products"]}
    )
    assert _refusal(sql, rules, manifest) == code
    assert rw.refused_models(rules, manifest) == {"v_totals", "v_nested"}


def test_a_model_with_rules_of_its_own_is_served():
    policy = AppPolicy(
        tables=["orders", "v_totals"], row_filters={"orders": "true", "v_totals": "true"}
    )
    rules = _rules(policy)
    assert rw.refused_models(rules, _manifest(models={"v_totals": ["orders"]})) == frozenset()


def test_a_column_restricted_table_must_be_in_the_data_and_show_a_column():
    gone = AppPolicy(
        tables=["archive"], column_policies={"archive": ColumnPolicy(allowed_columns=["id"])}
    )
    assert _refusal("SELECT * FROM archive", _rules(gone)) == "table_not_allowed"
    blind = AppPolicy(
        tables=["products"], column_policies={"products": ColumnPolicy(allowed_columns=["x"])}
    )
    assert _refusal("SELECT 1 FROM products", _rules(blind)) == "column_not_allowed"


def test_the_result_reports_what_to_bind_and_what_is_hidden():
    rules = _rules()
    # A query reading no restricted table runs as the caller wrote it (DuckDB's
    # error positions point into the caller's text), its placeholders unrenamed.
    text = "select *  from products where id = ?"
    untouched = rw.rewrite(text, rules, _manifest())
    assert untouched == rw.RewrittenQuery(text, (), False, False, frozenset())
    result = rw.rewrite("SELECT * FROM orders, customers WHERE status = ?", rules, _manifest())
    assert result.claims == ("cid",) and result.masks and result.positional
    assert result.hidden == {"margin"}
    plain = rw.rewrite("SELECT id FROM orders", rules, _manifest())
    assert not plain.masks and not plain.positional  # no placeholder of the caller's


def test_rewrites_are_cached_per_sql_rules_and_version():
    rules = _rules()
    sql = "SELECT id FROM orders WHERE id = 12345"
    v1, v2 = _manifest("cache-v1"), _manifest("cache-v2")
    assert rw.cached_rewrite(sql, rules, v1) is None
    done = rw.rewrite_and_cache(sql, rules, v1)
    assert rw.cached_rewrite(sql, rules, v1) == done
    assert rw.cached_rewrite(sql, rules, v2) is None
    refused = "WITH orders AS (SELECT 1) SELECT 12345"
    for attempt in (
        lambda: rw.rewrite_and_cache(refused, rules, v1),
        lambda: rw.cached_rewrite(refused, rules, v1),
    ):
        with pytest.raises(QueryRejected) as err:
            attempt()
        assert err.value.code == "cte_name_not_allowed"
        assert "a CTE may not be named 'orders'" in str(err.value)  # the message too


def test_the_rewrite_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(rw, "REWRITE_CACHE_ENTRIES", 3)
    rules = _rules()
    manifest = _manifest("bounded")
    for i in range(5):
        rw.rewrite_and_cache(f"SELECT {i} FROM orders", rules, manifest)
    assert len(rw._cache) == 3
    assert rw.cached_rewrite("SELECT 0 FROM orders", rules, manifest) is None
    assert rw.cached_rewrite("SELECT 4 FROM orders", rules, manifest) is not None


def test_a_hidden_column_is_answered_like_one_that_does_not_exist(con):
    rules = _rules()
    for column in ("margin", "no_such_column"):
        rewritten = rw.rewrite(f"SELECT {column} FROM orders", rules, _manifest())
        bound = rw.bind(rewritten, None, {"cid": 7}, {})
        message = f"column '{column}' does not exist or is not"
        with pytest.raises(ColumnNotAllowed, match=message), rw.column_refusals(rewritten.hidden):
            con.execute(rewritten.sql, bound)
    # Without hidden columns DuckDB's own error stands.
    with pytest.raises(duckdb.BinderException), rw.column_refusals(frozenset()):
        con.execute("SELECT no_such_column FROM products")


def test_a_filter_column_the_table_lacks_fails_instead_of_binding_outside(con):
    # orders has no `name`: the filter must not read the caller's customers.name.
    policy = AppPolicy(tables=["orders", "customers"], row_filters={"orders": "name = claim('n')"})
    sql = "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders)"
    with pytest.raises(duckdb.BinderException):
        _run(con, sql, policy, {"n": "Ada"})


def test_only_claim_calls_become_claim_parameters(con):
    # abs() and ceil() sort before "claim": ordinary functions all the same.
    policy = AppPolicy(
        tables=["orders"], row_filters={"orders": "abs(customer_id) = ceil(claim('cid'))"}
    )
    assert _run(con, "SELECT id FROM orders ORDER BY id", policy, {"cid": 8}) == [(2,)]


def test_a_requests_claims_and_mask_keys_stay_out_of_its_repr():
    access = rw.QueryAccess(_rules(), claims={"cid": "c-4711"}, mask_keys=mask_keys(SECRET))
    text = repr(access)
    assert "c-4711" not in text and mask_keys(SECRET)[MASK_INNER_PARAM] not in text


def test_a_callers_predicate_never_runs_on_rows_the_filter_hides(con):
    """The filtered table is a subquery with a barrier (`OFFSET 0`) that DuckDB
    does not push the caller's predicates through: a predicate that fails on a
    hidden row (customer 8's) would otherwise tell the caller that row exists."""
    probe = (
        "SELECT id FROM orders"
        " WHERE CAST(CASE WHEN customer_id = 8 THEN 'hidden' ELSE '1' END AS INTEGER) = 1"
        " ORDER BY id"
    )
    assert _run(con, probe) == [(1,), (3,)]
    joined = (
        "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id"
        " WHERE CAST(CASE WHEN o.customer_id = 8 THEN 'hidden' ELSE '1' END AS INTEGER) = 1"
    )
    assert sorted(_run(con, joined)) == [(1,), (3,)]
    # A filter that reads another table becomes a join, below which DuckDB would
    # push the caller's predicate onto every row of orders.
    by_name = AppPolicy(
        tables=["orders", "customers"],
        row_filters={"orders": "customer_id IN (SELECT id FROM customers WHERE name = claim('n'))"},
    )
    assert _run(con, probe, by_name, {"n": "Ada"}) == [(1,), (3,)]


def test_a_callers_own_subqueries_are_not_taken_for_inserted_ones(con):
    """The second check counts the subqueries the rewrite inserted (`main.t AS
    __rls_t`); a caller's subquery over another table, aliased or not, or over
    a set operation, is neither counted nor refused."""
    sql = (
        "SELECT id FROM orders WHERE id IN (SELECT 1 UNION ALL SELECT 3)"
        " AND id NOT IN (SELECT p.id FROM products AS p) AND id NOT IN (SELECT id FROM products)"
        " ORDER BY id"
    )
    assert _run(con, sql) == [(1,), (3,)]


def test_the_second_check_refuses_what_the_rewrite_left_in_place():
    """The rewritten SQL is parsed again: a restricted table or refused model
    read directly, or fewer inserted subqueries than references replaced
    (a round trip that lost one), is refused rather than run."""
    rules = _rules()
    refused = frozenset({"v_totals"})
    done = rw.rewrite("SELECT id FROM orders", rules, _manifest()).sql
    rw._verify(done, rules, refused, 1)
    for sql, expected in (
        ("SELECT id FROM orders", 0),
        ("SELECT * FROM v_totals", 0),
        (done, 2),
    ):
        with pytest.raises(QueryRejected) as err:
            rw._verify(sql, rules, refused, expected)
        assert err.value.code == "unsupported"
