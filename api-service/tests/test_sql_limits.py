"""The guard's structural limits and function rules (query/sql_limits.py), and
the query gate's fairness (query/fairness.py), in process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import pytest

from api_service.errors import QueryRejected, TooManyConcurrentQueries
from api_service.query.fairness import QueryGate
from api_service.query.sql_guard import GuardLimits, check_query
from api_service.query.sql_limits import denied

ALLOWED = {"inventory", "orders"}
REVIEWED = Path(__file__).parent / "data" / "duckdb_functions_reviewed.txt"


def _refused(sql: str, code: str, **kwargs) -> None:
    with pytest.raises(QueryRejected) as refused:
        check_query(sql, allowed_tables=ALLOWED, **kwargs)
    assert refused.value.code == code, refused.value


def test_every_duckdb_function_is_classified():
    reviewed = {
        line.strip()
        for line in REVIEWED.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    con = duckdb.connect()
    rows = con.execute("SELECT DISTINCT function_name FROM duckdb_functions()").fetchall()
    names = {r[0] for r in rows}
    unreviewed = sorted(n for n in names if not denied(n.lower()) and n not in reviewed)
    assert not unreviewed, f"review these DuckDB functions (allow or deny): {unreviewed}"


@pytest.mark.parametrize(
    "name",
    [
        "json_serialize_plan",
        "json_serialize_sql",
        "json_deserialize_sql",
        "json_execute_serialized_sql",
        "current_setting",
        "current_schema",
        "stats",
        "sleep_ms",
        "pg_sleep",
        "has_table_privilege",
        "pg_get_viewdef",
        "in_search_path",
    ],
)
def test_functions_by_category_are_denied(name):
    _refused(f"SELECT {name}('x')", "function_not_allowed")


def test_structural_limits_are_named_settings():
    def joins(n: int) -> str:
        rest = " ".join(f"JOIN inventory a{i} ON a{i}.id = a{i - 1}.id" for i in range(1, n + 1))
        return f"SELECT count(*) FROM inventory a0 {rest}"

    assert check_query(joins(24), allowed_tables=ALLOWED)
    _refused(joins(25), "query_too_complex")
    _refused(joins(5), "query_too_complex", limits=GuardLimits(joins=4))
    _refused(joins(5), "query_too_complex", limits=GuardLimits(table_references=5))
    union = " UNION ALL ".join("SELECT 1" for _ in range(34))
    _refused(union, "query_too_complex")
    wide = "SELECT " + ", ".join(["id"] * 5001) + " FROM inventory"
    _refused(wide, "query_too_complex", max_length=100_000)
    deep = "SELECT " + "abs(" * 120 + "id" + ")" * 120 + " FROM inventory"
    _refused(deep, "query_too_complex", max_length=100_000)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT printf('%5d|%-8s|%.2f', id, warehouse, 1.5) FROM inventory",
        "SELECT printf('** %d **', id) FROM inventory",
        "SELECT format('{:>10}', warehouse) FROM inventory",
        "SELECT lpad(warehouse, 20, ' '), rpad(warehouse, 20, ' '), lpad(status, 20, ' ')"
        " FROM inventory, orders",
        "SELECT repeat('-', 40)",
        "SELECT range(1, 100)",
        "SELECT bar(quantity, 0, 100, 40) FROM inventory",
        "SELECT repeat(warehouse, 3) FROM inventory",
        "SELECT list_transform(string_split(warehouse, '-'), lambda x: upper(x)) FROM inventory",
        "SELECT [x FOR x IN string_split(warehouse, '-') IF x <> warehouse] FROM inventory",
        "SELECT list_transform([1, 2], lambda x: x * quantity + id) FROM inventory",
        "SELECT list_filter(string_split(warehouse, '-'), lambda x: x = warehouse) FROM inventory",
    ],
)
def test_ordinary_formatting_passes(sql):
    assert check_query(sql, allowed_tables=ALLOWED)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT printf('%*d', 999999999, id) FROM inventory",
        "SELECT printf('%.*f', id, 1.5) FROM inventory",
        "SELECT printf('%99999d', id) FROM inventory",
        "SELECT format('{:>{}}', 'x', 999999999 + id) FROM inventory",
        "SELECT format('{0:>{1}}', 'x', id) FROM inventory",
        "SELECT printf(warehouse, id) FROM inventory",
        "SELECT repeat('x', id) FROM inventory",
        "SELECT repeat(repeat('x', 1000), 1000)",
        "SELECT repeat('x', 100) FROM (SELECT repeat('y', 1000) AS s) t",
        "SELECT lpad('x', 100000, ' ')",
        "SELECT bar(1, 0, 1, 1000000000)",
        "SELECT to_base(1, 2, 1000000000)",
        "SELECT equi_width_bins(0, 1, 1000000000, false)",
        "SELECT range(0, 1000000)",
        "SELECT generate_series(1, id) FROM inventory",
        "SELECT list_resize([1], 100000)",
        # Copies of a value read from the data or a parameter (its size is the caller's).
        "SELECT length(repeat(warehouse, 100)) FROM inventory",
        "SELECT length(repeat($s, 10000))",
        "SELECT list_resize([warehouse], 1000, warehouse) FROM inventory",
        "SELECT [warehouse FOR x IN range(100)] FROM inventory",
        "SELECT len([$s FOR x IN range(9000)])",
        "SELECT list_transform(string_split(warehouse, ''), lambda x: warehouse) FROM inventory",
        "SELECT list_reduce(string_split($s, ''), lambda a, b: a || $s)",
        "SELECT list_transform([[1]], lambda x: list_transform(range(100), lambda y: x))",
        "SELECT list_transform([1], lambda x: (SELECT max(warehouse) FROM inventory))",
    ],
)
def test_computed_or_huge_sizes_are_refused(sql):
    _refused(sql, "function_not_allowed")


def _levels(step: str, levels: int) -> str:
    ctes = ["a0 AS (SELECT warehouse AS s FROM inventory)"]
    ctes += [f"a{i} AS (SELECT {step} AS s FROM a{i - 1})" for i in range(1, levels + 1)]
    return f"WITH {', '.join(ctes)} SELECT length(s) FROM a{levels}"


LABEL_20 = " || ' ' || ".join(["warehouse", "CAST(id AS VARCHAR)"] * 10)


@pytest.mark.parametrize(
    "sql",
    [
        # one label joined from twenty column reads: additive, not multiplying
        f"SELECT {LABEL_20} AS label FROM inventory",
        # independent expressions of one level do not multiply each other
        "SELECT "
        + ", ".join(f"warehouse || CAST(id + {i} AS VARCHAR)" for i in range(12))
        + " FROM inventory",
        # a few levels of modest growth: 4 * 4 * 4 = 64
        _levels("s || '-' || s || '-' || s || s", 3),
        _levels("concat(s, s)", 6),  # 2^6 = 64
    ],
)
def test_joining_values_is_bounded_per_value_not_per_query(sql):
    assert check_query(sql, allowed_tables=ALLOWED)


@pytest.mark.parametrize(
    "sql",
    [
        _levels("concat(s, s)", 7),  # 2^7 = 128
        _levels("s || s || s || s", 4),  # 4^4 = 256
        # nested calls in one value add up: 4 reads at each of 4 levels
        _levels("concat(concat(s, s), list_value(s, s)[1])", 4),
        f"WITH a AS (SELECT {LABEL_20} AS s FROM inventory) SELECT s || s || s || s FROM a",
    ],
)
def test_values_grown_level_after_level_are_refused(sql):
    _refused(sql, "function_not_allowed")


def test_series_table_functions_take_constants():
    functions = {"range", "generate_series"}
    ok = "SELECT * FROM generate_series(DATE '2024-01-01', DATE '2024-12-31', INTERVAL 1 DAY)"
    assert check_query(ok, allowed_tables=ALLOWED, allowed_table_functions=functions)
    assert check_query(
        "SELECT count(*) FROM generate_series(1, 1000000)",
        allowed_tables=ALLOWED,
        allowed_table_functions=functions,
    )
    _refused(
        "SELECT count(*) FROM generate_series(1, 1000001)",
        "function_not_allowed",
        allowed_table_functions=functions,
    )
    _refused(
        "SELECT * FROM inventory, range(inventory.id)",
        "function_not_allowed",
        allowed_table_functions=functions,
    )


def test_the_gate_caps_users_and_serves_them_in_turn():
    async def scenario() -> list[str]:
        gate = QueryGate(capacity=2, per_user=2, per_app=10, per_user_queue=3)
        held = [await gate.acquire("hog", "app", 1), await gate.acquire("hog", "app", 1)]
        order: list[str] = []

        async def wait(user: str) -> None:
            slot = await gate.acquire(user, "app", 5)
            order.append(user)
            await asyncio.sleep(0)
            gate.release(slot)

        hogs = [asyncio.create_task(wait("hog")) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(TooManyConcurrentQueries) as refused:
            await gate.acquire("hog", "app", 1)  # a fourth waiter is one too many
        assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        other = asyncio.create_task(wait("other"))
        await asyncio.sleep(0)
        gate.release(held[0])  # the next turn goes to the user who has none running
        await asyncio.gather(other, *hogs)
        gate.release(held[1])
        assert gate.running == 0
        return order

    order = asyncio.run(scenario())
    assert order[0] == "other" and order.count("hog") == 3


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT quantity * 2 AS q2, q2 + 1 AS q3, q2 * q3 AS q4 FROM inventory",
        "SELECT nullif(nullif(warehouse, ''), '-') FROM inventory",
        "WITH a AS (SELECT * FROM inventory), b AS (SELECT * FROM a JOIN a AS a2 USING (id))"
        " SELECT * FROM b, a",
        "WITH a AS NOT MATERIALIZED (SELECT id FROM inventory) SELECT * FROM a",
        "SELECT * FROM inventory a JOIN inventory b USING (id) JOIN inventory c USING (id)",
        "SELECT * FROM inventory UNION ALL BY NAME SELECT * FROM inventory",
        "SELECT id FROM inventory WHERE id IN (" + ", ".join(map(str, range(3000))) + ")",
        "SELECT CASE warehouse WHEN 'a' THEN 1 WHEN 'b' THEN 2 ELSE 3 END FROM inventory",
        "SELECT CASE CASE id WHEN 1 THEN 'x' ELSE 'y' END WHEN 'x' THEN 1 END FROM inventory",
    ],
)
def test_what_the_binder_copies_a_little_passes(sql):
    assert check_query(sql, allowed_tables=ALLOWED)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id AS a0, "
        + ", ".join(f"a{i - 1} + a{i - 1} AS a{i}" for i in range(1, 14))
        + " FROM inventory",
        "SELECT " + "nullif(" * 13 + "id" + ", 1)" * 13 + " FROM inventory",
        "WITH c0 AS NOT MATERIALIZED (SELECT id FROM inventory), "
        + ", ".join(
            f"c{i} AS NOT MATERIALIZED (SELECT x.id FROM c{i - 1} x JOIN c{i - 1} y USING (id))"
            for i in range(1, 6)
        )
        + " SELECT count(*) FROM c5",
        "WITH c0 AS (SELECT id, warehouse FROM inventory), "
        + ", ".join(f"c{i} AS (SELECT * FROM c{i - 1} a, c{i - 1} b)" for i in range(1, 13))
        + " SELECT count(*) FROM c12",
        "SELECT " + "(" * 10 + "id" + " IN (1, 2, 3))::INT" * 10 + " FROM inventory",
        "SELECT "
        + "CASE " * 9
        + "id"
        + " WHEN 1 THEN 1 WHEN 2 THEN 2 WHEN 3 THEN 3 END" * 9
        + " FROM inventory",
        # the same with a comment glued to each keyword (the parser ignores comments)
        "SELECT "
        + "CASE/**/" * 9
        + "id"
        + " WHEN/**/1 THEN 1 WHEN/**/2 THEN 2 WHEN/**/3 THEN 3 END/**/" * 9
        + " FROM inventory",
    ],
)
def test_what_the_binder_copies_counts_towards_the_limits(sql):
    _refused(sql, "query_too_complex")


def test_comments_hide_no_keyword_from_the_token_count():
    """Simple CASEs are counted from DuckDB's tokenizer before anything parses the
    query (the parser copies the operand into every WHEN); a comment glued to a
    keyword made it invisible (131 tokens instead of 147,620), and comment-only
    text crashed the count."""
    from api_service.query.bind_size import parsed_tokens

    def nested(sep: str) -> str:
        whens = f" WHEN{sep}1 THEN 1 WHEN{sep}2 THEN 2 WHEN{sep}3 THEN 3 END{sep}"
        return f"SELECT {f'CASE{sep}' * 9}id{whens * 9} FROM inventory"

    assert parsed_tokens(nested("/**/")) == parsed_tokens(nested(" ")) > 100_000
    assert parsed_tokens("-- only a comment") <= 1  # counted, not crashed
