"""The SQL guard's edges, pinned: what its private parsing connection may do,
how nesting too deep for the analyser is refused, how a chain of set
operations is counted, and the decision cache's character budget."""

from __future__ import annotations

import duckdb
import pytest

from api_service.errors import QueryRejected
from api_service.query import sql_guard
from api_service.query.bind_size import parsed_tokens
from api_service.query.sql_guard import GuardLimits, check_query, parser_connection

ALLOWED = {"inventory"}


def _code(sql: str, **kwargs: object) -> tuple[str, str]:
    with pytest.raises(QueryRejected) as refused:
        check_query(sql, allowed_tables=ALLOWED, max_length=100_000, **kwargs)  # type: ignore[arg-type]
    return refused.value.code, str(refused.value)


def test_the_parsing_connection_cannot_read_files(tmp_path):
    # It only parses, but were a query ever run on it, it could read nothing.
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    with pytest.raises(duckdb.PermissionException):
        parser_connection().execute(f"SELECT * FROM read_text('{secret}')").fetchall()


def test_nesting_too_deep_to_analyse_is_refused_as_too_complex():
    # DuckDB parses 300 nested subqueries, but its JSON tree is deeper than
    # Python's recursion limit: refused with the guard's own code, never a 500.
    deep = "SELECT " + "(SELECT " * 300 + "1" + ")" * 300
    assert _code(deep) == ("query_too_complex", "the query is nested too deeply")


def test_a_chain_of_set_operations_counts_each_operation():
    def union(n: int) -> str:
        return " UNION ALL ".join("SELECT 1" for _ in range(n))

    limits = GuardLimits(set_operations=3)
    assert check_query(union(4), allowed_tables=ALLOWED, limits=limits)  # three operations
    code, message = _code(union(5), limits=limits)
    assert code == "query_too_complex" and "more than 3 set operations" in message


def test_a_cleared_decision_cache_has_its_whole_character_budget_again():
    cache = sql_guard._DecisionCache(entries=10, chars=100)

    def fill() -> None:
        for i in range(4):
            cache.put((f"{i:<25}", None, frozenset(), 0, GuardLimits()), ("c", "m"))  # 25 chars

    for _ in range(2):  # new, then cleared: exactly 100 characters, not one more
        fill()
        assert len(cache) == 4
        cache.put(("y", None, frozenset(), 0, GuardLimits()), ("c", "m"))
        assert len(cache) == 4
        cache.clear()
        assert len(cache) == 0
    fill()  # exactly the 100 characters
    assert len(cache) == 4
    cache.put(("x", None, frozenset(), 0, GuardLimits()), ("c", "m"))  # one more: the oldest goes
    assert len(cache) == 4


@pytest.mark.parametrize("qualified", ["temp.inventory", "other.inventory", "db.main.inventory"])
def test_an_allowed_table_in_another_schema_or_catalog_is_refused(qualified):
    assert _code(f"SELECT * FROM {qualified}") == (
        "table_not_allowed",
        "table 'inventory' is outside the published data; use unqualified table names",
    )
    assert check_query("SELECT * FROM main.inventory", allowed_tables=ALLOWED).tables == ALLOWED


def test_the_parsing_connection_is_locked_down():
    settings = (
        parser_connection()
        .execute(
            "SELECT current_setting('enable_external_access'),"
            " current_setting('autoload_known_extensions'),"
            " current_setting('autoinstall_known_extensions')"
        )
        .fetchone()
    )
    assert settings == (False, False, False)


@pytest.mark.parametrize("sql", ["-- only a comment", ";", "/* nothing */ ;"])
def test_text_without_a_statement_is_refused_not_crashed_on(sql):
    assert _code(sql) == ("multiple_statements", "send exactly one SQL statement (got 0)")


@pytest.mark.parametrize("sql", ["", "   \n\t"])
def test_blank_text_is_an_empty_query(sql):
    assert _code(sql) == ("empty_query", "the query is empty")


def test_the_expression_node_limit_is_exact():
    # six expression nodes as written; bound, one more: the output column (bind_size)
    sql = "SELECT id + 1 FROM inventory WHERE quantity > 2"
    assert check_query(sql, allowed_tables=ALLOWED, limits=GuardLimits(expression_nodes=7))
    code, message = _code(sql, limits=GuardLimits(expression_nodes=6))
    assert code == "query_too_complex" and "more than 6 expression nodes and columns" in message
    code, message = _code(sql, limits=GuardLimits(expression_nodes=5))
    assert code == "query_too_complex" and "more than 5 expression nodes);" in message


def test_a_recursive_cte_and_a_two_way_union_each_count_one_set_operation():
    recursive = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3)"
    one = GuardLimits(set_operations=1)
    assert check_query(f"{recursive} SELECT * FROM r", allowed_tables=ALLOWED, limits=one)
    assert check_query("SELECT 1 UNION SELECT 2", allowed_tables=ALLOWED, limits=one)
    code, _ = _code(f"{recursive} SELECT * FROM r UNION SELECT 5", limits=one)
    assert code == "query_too_complex"


def test_a_cte_redefined_inside_another_is_still_a_cte():
    sql = "WITH x AS (SELECT 1 AS a) SELECT * FROM (WITH x AS (SELECT 2 AS a) SELECT * FROM x) t"
    assert check_query(sql, allowed_tables=ALLOWED).tables == frozenset()


def test_a_query_of_exactly_a_quarter_of_the_character_budget_is_kept():
    cache = sql_guard._DecisionCache(entries=10, chars=100)
    cache.put(("q" * 25, None, frozenset(), 0, GuardLimits()), ("c", "m"))
    cache.put(("r" * 26, None, frozenset(), 0, GuardLimits()), ("c", "m"))  # over: not kept
    assert len(cache) == 1


def _nested_simple_case(depth: int) -> str:
    operand = "id"
    for _ in range(depth):
        operand = f"CASE {operand} WHEN 1 THEN 1 WHEN 2 THEN 2 END"
    return f"SELECT DISTINCT {operand} FROM inventory"


def test_nested_simple_cases_are_refused_past_twice_the_length_cap_in_copied_tokens():
    """The parser copies a simple CASE's operand into each WHEN: the guard counts
    the tokens with those copies and allows at most twice max_length."""
    sql = _nested_simple_case(6)  # 255 characters, 636 tokens once copied
    tokens = parsed_tokens(sql)
    assert (len(sql), tokens) == (255, 636)
    wide = GuardLimits(expression_nodes=1_000_000)  # only the token count decides
    check_query(sql, allowed_tables=ALLOWED, max_length=tokens // 2, limits=wide)
    with pytest.raises(QueryRejected, match="nested simple CASE") as refused:
        check_query(sql, allowed_tables=ALLOWED, max_length=tokens // 2 - 1, limits=wide)
    assert refused.value.code == "query_too_complex"


@pytest.mark.parametrize(
    ("uses", "written", "inlined"),
    [("c", 2, 1), ("c, c", 3, 2)],  # the CTE's own table, each use, and each copy
)
def test_copies_of_not_materialized_ctes_count_as_table_references(uses, written, inlined):
    sql = f"WITH c AS NOT MATERIALIZED (SELECT * FROM inventory) SELECT 1 FROM {uses}"
    cap = written + inlined
    check_query(sql, allowed_tables=ALLOWED, limits=GuardLimits(table_references=cap))
    with pytest.raises(QueryRejected, match=f"more than {cap - 1} table references") as refused:
        check_query(sql, allowed_tables=ALLOWED, limits=GuardLimits(table_references=cap - 1))
    assert refused.value.code == "query_too_complex"


def test_the_depth_limit_counts_each_level_and_allows_exactly_the_limit():
    # The SELECT node, three nested additions and the innermost constant: 5 levels.
    sql = "SELECT 1 + (2 + (3 + 4))"
    check_query(sql, allowed_tables=None, limits=GuardLimits(expression_depth=5))
    with pytest.raises(QueryRejected, match="nested deeper than 4 levels"):
        check_query(sql, allowed_tables=None, limits=GuardLimits(expression_depth=4))


def test_a_query_of_exactly_the_length_cap_is_allowed():
    sql = "SELECT id FROM inventory"
    check_query(sql, allowed_tables=ALLOWED, max_length=len(sql))
    with pytest.raises(QueryRejected) as refused:
        check_query(sql, allowed_tables=ALLOWED, max_length=len(sql) - 1)
    assert refused.value.code == "query_too_long"


def test_a_union_of_three_is_two_set_operations():
    sql = "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3"  # one node, three children
    check_query(sql, allowed_tables=ALLOWED, limits=GuardLimits(set_operations=2))
    code, message = _code(sql, limits=GuardLimits(set_operations=1))
    assert code == "query_too_complex" and "more than 1 set operations" in message


@pytest.mark.parametrize(
    "sql",
    ["SELECT main.abs(-1)", "SELECT system.abs(-1)", "SELECT * FROM main.range(3)"],
)
def test_an_allowed_function_with_a_schema_or_catalog_prefix_is_refused(sql):
    """A prefixed name may be another schema's macro of the same name: only bare
    names are checked against the allowed functions."""
    bare = sql.replace("main.", "").replace("system.", "")
    check_query(bare, allowed_tables=ALLOWED, allowed_table_functions=["range"])
    with pytest.raises(QueryRejected, match="without a schema or catalog prefix") as refused:
        check_query(sql, allowed_tables=ALLOWED, allowed_table_functions=["range"])
    assert refused.value.code == "function_not_allowed"


def test_nesting_too_deep_to_size_is_refused_as_too_complex():
    # 200 nested additions parse, but sizing them as DuckDB's binder would
    # recurses past Python's limit: refused with the guard's own code.
    sql = "SELECT " + "(1 + " * 200 + "1" + ")" * 200
    unlimited = GuardLimits(expression_depth=1_000_000, expression_nodes=1_000_000)
    with pytest.raises(QueryRejected, match="nested too deeply") as refused:
        check_query(sql, allowed_tables=ALLOWED, limits=unlimited)
    assert refused.value.code == "query_too_complex"


@pytest.mark.parametrize("name", ["duckdb_settings", "pg_roles", "sqlite_master", "pragma_x"])
def test_names_under_duckdbs_system_prefixes_are_never_tables_even_for_any_table(name):
    # A policy of "*" (allowed_tables=None) still never reaches the engine's catalog.
    with pytest.raises(QueryRejected, match=f"table '{name}' is not allowed") as refused:
        check_query(f"SELECT * FROM {name}", allowed_tables=None)
    assert refused.value.code == "table_not_allowed"


def test_a_recursive_cte_may_read_itself_even_where_it_shadows_another():
    recursive = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3)"
    for sql in (
        f"{recursive} SELECT n FROM r",
        f"WITH r AS (SELECT 1 AS n) SELECT * FROM ({recursive} SELECT n FROM r)",
    ):
        assert check_query(sql, allowed_tables=ALLOWED).tables == frozenset()


def test_a_syntax_error_is_the_parsers_first_line():
    # DuckDB's message goes on with the query and a caret under the error.
    assert _code("SELECT 1 FORM inventory") == (
        "syntax_error",
        'syntax error: Parser Error: syntax error at or near "inventory"',
    )


def test_only_joins_count_as_joins():
    no_joins = GuardLimits(joins=0)
    for sql in ("SELECT 1", "SELECT * FROM (SELECT 1) AS s", "SELECT * FROM (VALUES (1)) v(x)"):
        check_query(sql, allowed_tables=ALLOWED, limits=no_joins)
    code, message = _code("SELECT * FROM inventory a JOIN inventory b USING (id)", limits=no_joins)
    assert code == "query_too_complex" and "more than 0 joins" in message
