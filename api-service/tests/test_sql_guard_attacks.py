"""The SQL attack suite: every hostile query is refused by the guard, the
sandboxed connection refuses the same things on its own, and through HTTP no
attack reads the canary file or leaks anything; heavy queries are bounded by
the statement timeout and the row cap."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from api_service.data.snapshots import open_sandboxed
from api_service.errors import QueryRejected
from api_service.query import sql_guard
from api_service.query.sql_guard import cached_decision, check_query
from testsupport.api_app import make_app_client, publish_test_snapshot, write_whitelist

API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api-docs.md"
CANARY_TEXT = f"CANARY-{uuid.uuid4().hex}"
ALLOWED = {"inventory", "products", "orders"}

# {canary} is replaced by the canary file's path, {dir} by its folder.
ATTACKS: list[tuple[str, str, str]] = [
    # stacked statements and comment tricks
    ("stacked", "multiple_statements", "SELECT 1; SELECT * FROM read_text('{canary}')"),
    ("stacked_drop", "multiple_statements", "SELECT * FROM inventory; DROP TABLE inventory"),
    (
        "comment_hides_nothing",
        "multiple_statements",
        "SELECT 1 /* harmless */; ATTACH '{canary}' AS x",
    ),
    (
        "line_comment_newline",
        "multiple_statements",
        "SELECT 1 -- comment\n; COPY inventory TO '{dir}/out.csv'",
    ),
    ("nul_byte", "syntax_error", "SELECT 1\x00; SELECT * FROM read_text('{canary}')"),
    # DML hidden in a CTE
    ("cte_delete", "not_a_select", "WITH x AS (DELETE FROM inventory RETURNING *) SELECT * FROM x"),
    (
        "cte_insert",
        "not_a_select",
        "WITH x AS (INSERT INTO inventory VALUES (1, 1, 'a', 1) RETURNING *) SELECT 1",
    ),
    # file reads by function, quoted, case-mangled, qualified, nested
    ("read_text", "function_not_allowed", "SELECT * FROM read_text('{canary}')"),
    ("read_csv", "function_not_allowed", "SELECT * FROM read_csv('{canary}', header=false)"),
    ("read_csv_auto", "function_not_allowed", "SELECT * FROM read_csv_auto('{canary}')"),
    ("read_blob", "function_not_allowed", "SELECT * FROM read_blob('{canary}')"),
    ("read_json", "function_not_allowed", "SELECT * FROM read_json_objects('{canary}')"),
    ("read_parquet", "function_not_allowed", "SELECT * FROM read_parquet('{canary}')"),
    ("parquet_scan", "function_not_allowed", "SELECT * FROM parquet_scan('{canary}')"),
    ("sniff_csv", "function_not_allowed", "SELECT * FROM sniff_csv('{canary}')"),
    ("glob", "function_not_allowed", "SELECT * FROM glob('{dir}/*')"),
    ("quoted_function", "function_not_allowed", "SELECT * FROM \"read_text\"('{canary}')"),
    ("mixed_case_function", "function_not_allowed", "SELECT * FROM ReAd_TeXt('{canary}')"),
    ("schema_qualified", "function_not_allowed", "SELECT * FROM main.read_text('{canary}')"),
    (
        "catalog_qualified",
        "function_not_allowed",
        "SELECT * FROM system.main.read_text('{canary}')",
    ),
    (
        "in_cte",
        "function_not_allowed",
        "WITH x AS (SELECT * FROM read_text('{canary}')) SELECT * FROM x",
    ),
    (
        "in_scalar_subquery",
        "function_not_allowed",
        "SELECT (SELECT content FROM read_text('{canary}'))",
    ),
    (
        "in_exists",
        "function_not_allowed",
        "SELECT * FROM inventory WHERE EXISTS (SELECT 1 FROM read_text('{canary}'))",
    ),
    (
        "in_lateral",
        "function_not_allowed",
        "SELECT * FROM inventory, LATERAL (SELECT * FROM read_text('{canary}'))",
    ),
    (
        "in_union",
        "function_not_allowed",
        "SELECT 'a' UNION ALL SELECT content FROM read_text('{canary}')",
    ),
    # file reads by bare path (replacement scans)
    ("bare_path", "file_access", "SELECT * FROM '{canary}'"),
    ("bare_path_quoted_identifier", "file_access", 'SELECT * FROM "{canary}"'),
    ("bare_csv_name", "file_access", "SELECT * FROM 'secrets.csv'"),
    ("url_path", "file_access", "SELECT * FROM 'https://example.com/data.parquet'"),
    # SQL running SQL
    (
        "query_function",
        "function_not_allowed",
        "SELECT * FROM query('SELECT * FROM read_text(''{canary}'')')",
    ),
    ("query_table", "function_not_allowed", "SELECT * FROM query_table('customers')"),
    ("json_execute", "function_not_allowed", "SELECT * FROM json_execute_serialized_sql('{{}}')"),
    # statements other than SELECT
    ("copy_to", "not_a_select", "COPY inventory TO '{dir}/out.csv'"),
    ("copy_from", "not_a_select", "COPY inventory FROM '{canary}'"),
    ("attach", "not_a_select", "ATTACH '{dir}/new.db' AS evil"),
    ("detach", "not_a_select", "DETACH DATABASE evil"),
    ("install", "not_a_select", "INSTALL httpfs"),
    ("load", "not_a_select", "LOAD httpfs"),
    ("set", "not_a_select", "SET enable_external_access = true"),
    ("reset", "not_a_select", "RESET lock_configuration"),
    ("pragma", "not_a_select", "PRAGMA database_list"),
    ("export", "not_a_select", "EXPORT DATABASE '{dir}/export'"),
    ("import", "not_a_select", "IMPORT DATABASE '{dir}'"),
    ("call", "not_a_select", "CALL pragma_version()"),
    ("explain_analyze", "not_a_select", "EXPLAIN ANALYZE SELECT * FROM inventory"),
    ("create_table", "not_a_select", "CREATE TABLE evil AS SELECT 1"),
    (
        "create_macro",
        "not_a_select",
        "CREATE MACRO evil() AS TABLE SELECT * FROM read_text('{canary}')",
    ),
    ("create_secret", "not_a_select", "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')"),
    ("update", "not_a_select", "UPDATE inventory SET quantity = 0"),
    ("checkpoint", "not_a_select", "CHECKPOINT"),
    ("use", "not_a_select", "USE system"),
    ("pivot_statement", "not_a_select", "PIVOT inventory ON warehouse USING sum(quantity)"),
    # environment, settings, secrets, session state
    ("getenv", "function_not_allowed", "SELECT getenv('HOME')"),
    ("current_setting", "function_not_allowed", "SELECT current_setting('home_directory')"),
    (
        "current_setting_qualified",
        "function_not_allowed",
        "SELECT system.main.current_setting('temp_directory')",
    ),
    ("getvariable", "function_not_allowed", "SELECT getvariable('x')"),
    ("duckdb_secrets", "function_not_allowed", "SELECT * FROM duckdb_secrets()"),
    ("which_secret", "function_not_allowed", "SELECT * FROM which_secret('s3://bucket/x', 's3')"),
    ("duckdb_settings", "function_not_allowed", "SELECT * FROM duckdb_settings()"),
    ("pg_settings_view", "table_not_allowed", "SELECT * FROM pg_settings"),
    ("information_schema", "table_not_allowed", "SELECT * FROM information_schema.tables"),
    ("duckdb_tables_view", "table_not_allowed", "SELECT * FROM duckdb_tables"),
    ("sqlite_master", "table_not_allowed", "SELECT * FROM sqlite_master"),
    ("write_log", "function_not_allowed", "SELECT write_log('x')"),
    ("setseed", "function_not_allowed", "SELECT setseed(0.5)"),
    # tables outside the whitelist, by every route
    ("not_whitelisted", "table_not_allowed", "SELECT * FROM customers"),
    (
        "not_whitelisted_subquery",
        "table_not_allowed",
        "SELECT (SELECT max(api_secret) FROM customers)",
    ),
    (
        "not_whitelisted_join",
        "table_not_allowed",
        "SELECT * FROM inventory JOIN customers USING (id)",
    ),
    (
        "cte_shadowing_in_sibling",
        "table_not_allowed",
        "SELECT 1 FROM (WITH customers AS (SELECT 1) SELECT * FROM customers) t, customers",
    ),
    (
        "cte_self_reference",
        "table_not_allowed",
        "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
    ),
    ("catalog_prefix", "table_not_allowed", "SELECT * FROM analytics.main.inventory"),
    ("other_schema", "table_not_allowed", "SELECT * FROM temp.main.inventory"),
    ("time_travel", "unsupported", "SELECT * FROM inventory AT (VERSION => 1)"),
    ("describe", "unsupported", "DESCRIBE customers"),
    ("show_tables", "unsupported", "SHOW TABLES"),
    ("summarize", "unsupported", "SUMMARIZE customers"),
    # bombs the guard can see
    ("range_table_function", "function_not_allowed", "SELECT * FROM range(1000000000000)"),
    (
        "generate_series",
        "function_not_allowed",
        "SELECT count(*) FROM generate_series(1, 1000000000000)",
    ),
    ("huge_repeat", "function_not_allowed", "SELECT repeat('x', 1000000000)"),
    ("nested_repeat", "function_not_allowed", "SELECT repeat(repeat('x', 10000), 10000)"),
    ("huge_lpad", "function_not_allowed", "SELECT lpad('', 1000000000, 'x')"),
    ("printf_width", "function_not_allowed", "SELECT printf('%999999999d', 1)"),
    ("python_variable_scan", "table_not_allowed", "SELECT * FROM canary_table"),
]
TEMPLATES = {name: template for name, _, template in ATTACKS}


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("canary") / "canary.csv"
    path.write_text(f"secret\n{CANARY_TEXT}\n")
    return path


def _sql(template: str, canary: Path) -> str:
    return (
        template.replace("{canary}", str(canary))
        .replace("{dir}", str(canary.parent))
        .replace("{{}}", "{}")
    )


def test_the_suite_has_at_least_forty_attacks():
    assert len(ATTACKS) >= 40
    assert len({name for name, _, _ in ATTACKS}) == len(ATTACKS)
    # each refusal names its reason with a code the API documents
    documented = set(re.findall(r"^\| 400 \| `([a-z_]+)`", API_DOCS.read_text(), flags=re.M))
    assert {code for _, code, _ in ATTACKS} <= documented


@pytest.mark.parametrize(("name", "code", "template"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_the_guard_refuses(name, code, template, canary):
    with pytest.raises(QueryRejected) as refused:
        check_query(_sql(template, canary), allowed_tables=ALLOWED)
    assert refused.value.code == code, str(refused.value)
    assert CANARY_TEXT not in str(refused.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM inventory",
        "select warehouse, sum(quantity) from INVENTORY group by 1 order by 1",
        "FROM orders SELECT status, count(*) GROUP BY ALL",
        "WITH low AS (SELECT * FROM inventory WHERE quantity < 5) SELECT count(*) FROM low",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT * FROM t",
        "SELECT p.name, i.quantity FROM products p JOIN inventory i ON i.product_id = p.id",
        "SELECT * FROM orders WHERE status = $status AND created_at >= $since",
        "SELECT * FROM inventory WHERE id IN (SELECT product_id FROM inventory)",
        "SELECT repeat('-', 20), lpad(warehouse, 8, ' ') FROM inventory",
        "SELECT * FROM (VALUES (1, 'a')) v(id, name)",
        "SELECT list_transform([1, 2], x -> x * 2)",
        "WITH customers AS (SELECT 1 AS id) SELECT * FROM customers",
    ],
)
def test_the_guard_lets_ordinary_analytics_through(sql):
    guarded = check_query(sql, allowed_tables=ALLOWED)
    assert guarded.tables <= ALLOWED


def test_the_guard_reports_tables_parameters_and_a_literal_free_fingerprint():
    a = check_query("SELECT * FROM orders WHERE id = 1 AND status = $s", allowed_tables=ALLOWED)
    b = check_query("SELECT * FROM orders WHERE id = 99 AND status = $s", allowed_tables=ALLOWED)
    c = check_query("SELECT * FROM inventory WHERE id = 1", allowed_tables=ALLOWED)
    assert a.tables == {"orders"} and a.parameters == {"s"}
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_limits_on_length_and_nesting():
    with pytest.raises(QueryRejected, match="longer than") as refused:
        check_query("SELECT 1 " + " " * 30_000, allowed_tables=ALLOWED, max_length=20_000)
    assert refused.value.code == "query_too_long"
    # DuckDB's parser stops at 1000 levels, before the guard's own depth limit
    # (query_too_complex at GUARD_MAX_EXPRESSION_DEPTH, test_sql_limits.py) sees a tree
    deep = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    with pytest.raises(QueryRejected, match="depth") as refused:
        check_query(deep, allowed_tables=ALLOWED, max_length=100_000)
    assert refused.value.code == "syntax_error"


def test_table_functions_need_the_policy_and_the_safe_list():
    sql = "SELECT * FROM range(10)"
    assert check_query(sql, allowed_tables=ALLOWED, allowed_table_functions={"range"})
    with pytest.raises(QueryRejected, match=r"read_text\(\)") as refused:
        check_query(
            "SELECT * FROM read_text('x')",
            allowed_tables=ALLOWED,
            allowed_table_functions={"read_text"},
        )
    assert refused.value.code == "function_not_allowed"


# -- the decision cache --------------------------------------------------------------


def test_a_cached_decision_never_crosses_policies(monkeypatch):
    sql_guard.clear_guard_cache()
    sql = "SELECT count(*) FROM customers"
    for _ in range(2):  # the second round is answered from the cache
        assert check_query(sql, allowed_tables={"customers"}).tables == {"customers"}
        with pytest.raises(QueryRejected) as refused:
            check_query(sql, allowed_tables=ALLOWED)
        assert refused.value.code == "table_not_allowed"
        # wildcard policies and table functions are part of the key as well
        assert check_query(sql, allowed_tables=None).tables == {"customers"}
        assert check_query(
            "SELECT * FROM range(3)", allowed_tables=ALLOWED, allowed_table_functions={"range"}
        )
        with pytest.raises(QueryRejected, match="range"):
            check_query("SELECT * FROM range(3)", allowed_tables=ALLOWED)
        with pytest.raises(QueryRejected, match="longer than"):
            check_query(sql, allowed_tables={"customers"}, max_length=10)

    # Each policy's answer comes from the cache, without parsing again.
    def no_parsing(sql: str) -> None:
        raise AssertionError("parsed a cached query")

    monkeypatch.setattr(sql_guard, "_parse_tree", no_parsing)
    assert cached_decision(sql, allowed_tables={"CUSTOMERS"}) is not None
    with pytest.raises(QueryRejected, match="not allowed for this application"):
        cached_decision(sql, allowed_tables=ALLOWED)
    assert cached_decision(sql, allowed_tables={"orders"}) is None  # never decided: not cached
    assert cached_decision(sql + " ", allowed_tables={"customers"}) is None  # the exact text


def test_cached_refusals_keep_their_code_and_message(canary):
    sql_guard.clear_guard_cache()
    for name in ("read_text", "cte_delete", "stacked", "not_whitelisted", "syntax_garbage"):
        template = TEMPLATES.get(name, "SELEC 1 FROM")
        refusals = []
        for _ in range(2):
            with pytest.raises(QueryRejected) as refused:
                check_query(_sql(template, canary), allowed_tables=ALLOWED)
            refusals.append((refused.value.code, str(refused.value)))
        assert refusals[0] == refusals[1]


def test_the_decision_cache_is_bounded(monkeypatch):
    queries = [f"SELECT {i} FROM inventory" for i in range(5)]  # 23 characters each
    monkeypatch.setattr(sql_guard, "_decisions", sql_guard._DecisionCache(entries=3, chars=1000))
    for sql in queries:
        check_query(sql, allowed_tables=ALLOWED)
    assert len(sql_guard._decisions) == 3
    assert cached_decision(queries[1], allowed_tables=ALLOWED) is None  # least recently used
    assert cached_decision(queries[4], allowed_tables=ALLOWED) is not None

    monkeypatch.setattr(sql_guard, "_decisions", sql_guard._DecisionCache(entries=10, chars=100))
    for sql in queries:
        check_query(sql, allowed_tables=ALLOWED)
    assert len(sql_guard._decisions) == 4  # 100 characters of SQL hold four
    long = queries[0] + " " * 10  # over a quarter of the budget: decided, not kept
    check_query(long, allowed_tables=ALLOWED)
    assert cached_decision(long, allowed_tables=ALLOWED) is None


# -- the sandbox on its own (the guard bypassed) -------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("sandbox") / "snap.db"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE inventory AS SELECT range AS id FROM range(10)")
    con.close()
    sandboxed = open_sandboxed(path, memory_limit="256MB", threads=1)
    yield sandboxed
    sandboxed.close()


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM read_text('{canary}')",
        "SELECT * FROM read_csv('{canary}')",
        "SELECT * FROM '{canary}'",
        "SELECT * FROM glob('{dir}/*')",
        "COPY inventory TO '{dir}/written.csv'",
        "ATTACH '{dir}/attached.db' AS x",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CREATE TABLE t AS SELECT 1",
        "SELECT * FROM query('SELECT * FROM read_text(''{canary}'')')",
    ],
)
def test_the_sandbox_refuses_even_without_the_guard(sandbox, canary, template):
    cursor = sandbox.cursor()
    try:
        with pytest.raises(duckdb.Error) as failed:
            cursor.execute(_sql(template, canary)).fetchall()
    finally:
        cursor.close()
    assert CANARY_TEXT not in str(failed.value)
    assert not (canary.parent / "written.csv").exists()
    assert not (canary.parent / "attached.db").exists()


def test_the_sandbox_does_not_scan_python_variables(sandbox):
    canary_table = pa.table({"secret": [CANARY_TEXT]})  # noqa: F841 - what a replacement scan would find
    cursor = sandbox.cursor()
    try:
        with pytest.raises(duckdb.CatalogException):
            cursor.execute("SELECT * FROM canary_table").fetchall()
    finally:
        cursor.close()


# -- through HTTP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, issuer):
    root = tmp_path_factory.mktemp("api")
    publish_test_snapshot(root / "store", rows=300)
    whitelist = write_whitelist(
        root / "whitelist.json",
        {
            "policies": {
                "default": {"tables": sorted(ALLOWED)},
                "everything": {"tables": ["*"]},
            },
            "apps": {"wildcard-app": "everything"},
        },
    )
    env = {
        **issuer.settings_env(),
        "STORAGE_URL": (root / "store").as_uri(),
        "DATA_DIR": str(root / "var"),
        "QUERY_WHITELIST_PATH": str(whitelist),
        "QUERY_TIMEOUT_SECONDS": "1",
        "MAX_RESULT_ROWS": "100",
        "DUCKDB_MEMORY_LIMIT": "256MB",
        "DUCKDB_THREADS": "1",
        "RATE_LIMIT_REQUESTS": "100000",
    }
    with make_app_client(env) as c:
        yield c


@pytest.fixture(scope="module")
def headers(issuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(sub='sql-attacker')}"}


@pytest.fixture(scope="module")
def wildcard_headers(issuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(sub='sql-attacker-2', azp='wildcard-app')}"}


def _assert_refused_cleanly(response, canary: Path) -> None:
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert CANARY_TEXT not in response.text
    assert str(canary.parent) not in response.text
    assert "Traceback" not in response.text
    assert not re.search(r"/(tmp|home|root|work|var)/", response.text)


@pytest.mark.parametrize(("name", "code", "template"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attacks_through_http_are_refused(client, headers, canary, name, code, template):
    response = client.post("/query", json={"sql": _sql(template, canary)}, headers=headers)
    _assert_refused_cleanly(response, canary)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)
    assert not (canary.parent / "out.csv").exists()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("read_text", "function_not_allowed"),
        ("bare_path", "file_access"),
        ("query_function", "function_not_allowed"),
        ("pg_settings_view", "table_not_allowed"),
        ("information_schema", "table_not_allowed"),
        ("duckdb_tables_view", "table_not_allowed"),
        ("sqlite_master", "table_not_allowed"),
        ("catalog_prefix", "table_not_allowed"),
        ("current_setting", "function_not_allowed"),
        # '*' lets the name through the guard; the sandbox has no such table
        # (no replacement scan of the process's variables), so DuckDB refuses it
        ("python_variable_scan", "query_error"),
    ],
)
def test_a_wildcard_policy_still_refuses_files_and_catalog_views(
    client, wildcard_headers, canary, name, code
):
    template = TEMPLATES[name]
    response = client.post("/query", json={"sql": _sql(template, canary)}, headers=wildcard_headers)
    _assert_refused_cleanly(response, canary)
    assert response.json()["error"]["code"] == code, response.text


def test_the_same_sql_is_decided_per_policy_through_http(client, headers, wildcard_headers):
    sql = "SELECT count(*) AS n FROM customers WHERE id > 3"  # customers: wildcard policy only
    for _ in range(3):  # later rounds are answered from the guard's cache
        allowed = client.get("/query", params={"q": sql}, headers=wildcard_headers)
        assert allowed.status_code == 200, allowed.text
        refused = client.get("/query", params={"q": sql}, headers=headers)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "table_not_allowed"


def test_a_cross_join_bomb_is_cut_by_the_row_cap(client, headers):
    response = client.post(
        "/query",
        json={"sql": "SELECT a.id, b.id, c.id FROM inventory a, inventory b, inventory c"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["row_count"] == 100 and body["truncated"] is True


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM inventory a, inventory b, inventory c, inventory d",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT max(n) FROM t",
        "SELECT sum(length(a.warehouse || b.warehouse)) FROM inventory a, inventory b,"
        " inventory c, inventory d",
    ],
    ids=["cross_join_aggregate", "endless_recursive_cte", "string_cross_join"],
)
def test_heavy_queries_are_stopped_by_the_timeout(client, headers, sql):
    response = client.post("/query", json={"sql": sql}, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "query_timeout"


def test_huge_lists_are_refused_before_they_are_built(client, headers):
    response = client.post("/query", json={"sql": "SELECT range(1000000000000)"}, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "function_not_allowed"


def test_the_server_still_answers_after_the_attacks(client, headers):
    response = client.get(
        "/query", params={"q": "SELECT count(*) AS n FROM inventory"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"n": 300}]
