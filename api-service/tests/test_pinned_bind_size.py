"""The binder-size estimate (query/bind_size.py), pinned to exact numbers.

The guard refuses a query whose estimate passes GUARD_MAX_EXPRESSION_NODES, so
an estimate that drifts lets a query that binds for minutes through, or
refuses ordinary ones. Each expected number below is derived by hand from the
module's model, on the tree the guard itself parses (`sql_guard._parse_tree`):

- an expression node (anything DuckDB serialises with a `class`: a column, a
  constant, a function, an operator, a CAST and its TYPE, a STAR) counts 1
  plus its children; `a + 1` is 3, `CAST(a AS INT)` is 3;
- a base table counts 1; a JOIN counts its condition; a cross join or an
  empty FROM counts nothing;
- a reused alias counts its expression; a macro's argument counts once per
  copy; `E IN (k items)` counts E k times when E is more than one node;
- `*` counts 1 plus the columns it expands to (TABLE_WIDTH for a table the
  guard does not know);
- a CTE is bound once, and each reference to it counts 1, unless it is NOT
  MATERIALIZED: then each reference counts its whole body again.

`parsed_tokens` counts 1 for the statement, 1 per token (comments are not
tokens), nothing for the END that closes a CASE, and a simple CASE's operand
once per WHEN instead of once.
"""

from __future__ import annotations

import duckdb
import pytest

from api_service.errors import QueryRejected
from api_service.query.bind_size import TABLE_WIDTH, bound_size, macro_copies, parsed_tokens
from api_service.query.sql_guard import GuardLimits, _parse_tree, check_query, parser_connection

COPIES = macro_copies(parser_connection())  # what the guard uses (sql_guard._MACRO_COPIES)
W = TABLE_WIDTH  # 32


def size(sql: str, copies: dict[str, tuple[int, ...]] | None = None) -> int:
    return bound_size(_parse_tree(sql), COPIES if copies is None else copies)[0]


def inlined_tables(sql: str) -> int:
    return bound_size(_parse_tree(sql), COPIES)[1]


def test_table_width_is_32_columns():
    assert TABLE_WIDTH == 32


# -- expression nodes ---------------------------------------------------------


def test_plain_expressions_count_their_nodes():
    assert size("SELECT 1") == 1  # the constant; an empty FROM counts nothing
    assert size("SELECT a + 1 FROM t") == 1 + 3  # the table, then + a 1
    assert size("SELECT CAST(a AS INT) FROM t") == 1 + 3  # the table, then CAST a TYPE
    # WHERE, ORDER BY and LIMIT count too: t, 1, (> a 0), ORDER BY a, LIMIT 3.
    assert size("SELECT 1 FROM t WHERE a > 0 ORDER BY a LIMIT 3") == 1 + 1 + 3 + 1 + 1


def test_the_where_clause_adds_to_the_select_list():
    # t 1 + a 1 = 2, WHERE (> a 0) 3: added, not merged bit-wise (2 | 3 is 3).
    assert size("SELECT a FROM t WHERE a > 0") == 5


def test_coalesce_does_not_copy_its_first_argument():
    # Only IN copies its operand: coalesce is 1 + (+ a 1) 3 + b 1 + c 1.
    assert size("SELECT coalesce(a + 1, b, c)") == 6


# -- reused aliases -----------------------------------------------------------


def test_a_reused_alias_counts_as_its_expression_written_out():
    # x = (+ a 1) = 3; y = (* x x) = 1 + 3 + 3 = 7; no FROM: 10.
    assert size("SELECT a + 1 AS x, x * x AS y") == 10
    assert size("SELECT a + 1 AS x, (a + 1) * (a + 1) AS y") == 10


def test_reused_aliases_grow_exponentially_along_a_chain():
    # x = 1, y = 1 + x + x = 3, z = 1 + y + y = 7: 11, as written out.
    assert size("SELECT a AS x, x + x AS y, y + y AS z") == 11
    assert size("SELECT a AS x, a + a AS y, (a + a) + (a + a) AS z") == 11


def test_alias_matching_is_case_insensitive():
    assert size("SELECT a + 1 AS X, x * x AS y") == 10
    assert size("SELECT a + 1 AS x, X * X AS y") == 10


def test_a_qualified_column_is_not_an_alias():
    # t.a names the table's column even with an alias called t: 1 (table) + 3 + (* 1 1) 3.
    assert size("SELECT a + 1 AS t, t.a * t.a AS y FROM t") == 1 + 3 + 3


def test_an_alias_counts_only_after_it_is_defined():
    # y reads x before x exists (a column then): (* x x) 3 + (+ a 1) 3.
    assert size("SELECT x * x AS y, a + 1 AS x") == 6


def test_an_alias_reused_in_where_counts_its_expression():
    # 1 (table) + x 3 + WHERE (> (* x x) 0) = 1 + 7 + 1 = 9: 13, as written out.
    assert size("SELECT a + 1 AS x FROM t WHERE x * x > 0") == 13
    assert size("SELECT a + 1 AS x FROM t WHERE (a + 1) * (a + 1) > 0") == 13


def test_items_after_a_star_still_count():
    # 1 (table) + * (1 + 32) + x 3 + (* x x) 7.
    assert size("SELECT *, a + 1 AS x, x * x FROM t") == 1 + (1 + W) + 3 + 7


# -- macros -------------------------------------------------------------------


def test_nullif_copies_its_first_argument():
    # nullif(a, b) is CASE WHEN a = b THEN NULL ELSE a END: a twice, b once.
    assert COPIES["nullif"] == (2, 1)
    assert size("SELECT nullif(a, b)") == 1 + 2 * 1 + 1
    assert size("SELECT nullif(a + 1, b)") == 1 + 2 * 3 + 1  # 8
    assert size("SELECT nullif(a, b + 1)") == 1 + 2 * 1 + 3  # 6
    assert size("SELECT NULLIF(a + 1, b)") == 8  # the parser lower-cases the name


def test_nested_nullif_doubles_at_each_level():
    # n(0) = 1 (a), n(k) = 1 + 2 n(k-1) + 1 (the constant): 4, 10, 22.
    assert size("SELECT nullif(nullif(nullif(a, 1), 1), 1)") == 22


def test_macro_arguments_past_the_known_copies_count_once():
    copies = {"f": (3,)}
    # 1 + 3 x (+ a 1) + 1 x (+ b 1) = 1 + 9 + 3.
    assert size("SELECT f(a + 1, b + 1)", copies) == 13
    assert size("SELECT f(a + 1, b + 1)", {}) == 7  # not a macro: each argument once


def test_a_macro_called_with_more_arguments_than_it_takes_counts_the_rest_once():
    # weighted_avg copies (2, 2); a third and fourth argument (a bind error later,
    # not a crash in the guard) count once: 1 + 2 x 3 + 2 x 1 + 3 + 1.
    assert size("SELECT weighted_avg(a + 1, b, c + 1, d)") == 13


def test_a_macro_call_counts_its_filter_once():
    # t 1 + weighted_avg 1 + a twice 2 + b twice 2 + FILTER (> c 0) 3.
    assert size("SELECT weighted_avg(a, b) FILTER (WHERE c > 0) FROM t") == 9


def test_macros_that_copy_nothing_are_not_listed():
    # list_reverse(l) is l[:-:-1], array_append(arr, el) is list_append(arr, el).
    assert "list_reverse" not in COPIES and "array_append" not in COPIES
    # weighted_avg names "value" (quoted in its body) and weight twice each.
    assert COPIES["weighted_avg"] == (2, 2)


def test_user_macros_are_read_by_name_and_overloads_merge():
    con = duckdb.connect()
    con.execute("CREATE MACRO Twice(x) AS x + x")
    con.execute("CREATE MACRO once(a, b) AS a + b")
    con.execute("CREATE MACRO lb(a, ba) AS a + ba + ba")  # `a` inside `ba` is not `a`
    con.execute("CREATE MACRO ov(a) AS a + a + a, (a, b, c) AS a + b + c + c")
    con.execute("CREATE MACRO vo(a, b, c) AS a + b + c + c, (a) AS a + a + a")  # longest first
    copies = macro_copies(con)
    assert copies["twice"] == (2,)
    assert "once" not in copies
    assert copies["lb"] == (1, 2)
    # Per position, the most copies of any overload: (3,) and (1, 1, 2).
    assert copies["ov"] == copies["vo"] == (3, 1, 2)


# -- IN lists -----------------------------------------------------------------


def test_in_copies_a_compound_operand_once_per_item():
    assert size("SELECT a IN (1, 2, 3)") == 1 + 1 + 3  # a column is not copied
    assert size("SELECT -a IN (1, 2, 3)") == 1 + 3 * 2 + 3  # (- a) is 2 nodes: 10
    assert size("SELECT (a + 1) IN (1, 2, 3)") == 1 + 3 * 3 + 3  # 13
    assert size("SELECT (a + 1) IN (5)") == 1 + 3 + 1  # one item: one copy
    assert size("SELECT (a + 1) NOT IN (1, 2, 3)") == 1 + 13  # NOT around the IN


def test_in_a_subquery_does_not_copy_its_operand():
    # SUBQUERY 1 + (SELECT b FROM u) 2 + the operand once.
    assert size("SELECT a IN (SELECT b FROM u)") == 1 + 2 + 1
    assert size("SELECT (a + 1) IN (SELECT b FROM u)") == 1 + 2 + 3
    assert size("SELECT (SELECT a + 1 FROM t)") == 1 + 1 + 3


# -- CTEs ---------------------------------------------------------------------

# The body (SELECT a + 1 FROM t) is 1 + 3 = 4 and 1 column wide; the main query
# joins two references ON true (1) and * expands 1 + 1 columns (+1 for the star).
_TWICE = "WITH c AS {} (SELECT a + 1 FROM t) SELECT * FROM c x JOIN c y ON true"


def test_a_materialised_cte_counts_its_body_once():
    assert size(_TWICE.format("")) == 4 + (1 + 1 + 1) + (1 + 2)  # 10
    assert size(_TWICE.format("MATERIALIZED")) == 10
    assert inlined_tables(_TWICE.format("")) == 0


def test_a_not_materialised_cte_counts_its_body_at_each_reference():
    expected = (4 + 4 + 1) + (1 + 2)  # 12
    assert size(_TWICE.format("NOT MATERIALIZED")) == expected
    # ... which is the query with the body written out at each reference.
    inline = "SELECT * FROM (SELECT a + 1 FROM t) x JOIN (SELECT a + 1 FROM t) y ON true"
    assert size(inline) == expected
    assert inlined_tables(_TWICE.format("NOT MATERIALIZED")) == 2  # t, once per reference


def test_a_not_materialised_cte_nobody_reads_is_not_bound():
    sql = "WITH c AS NOT MATERIALIZED (SELECT a + 1 FROM t) SELECT 1"
    assert size(sql) == 1 and inlined_tables(sql) == 0


def test_not_materialised_ctes_copy_the_ones_they_read():
    # c reads t and u, d reads c: each reference to d copies in d's reference to
    # c and, through it, c's t and u: 3 more per reference. (The absolute count
    # also holds the copies of c that sizing d's body adds, once per body.)
    def chain(references: str) -> str:
        return (
            "WITH c AS NOT MATERIALIZED (SELECT a FROM t JOIN u ON true),"
            f" d AS NOT MATERIALIZED (SELECT a FROM c) SELECT 1 FROM {references}"
        )

    assert inlined_tables(chain("d x JOIN d y ON true")) - inlined_tables(chain("d")) == 3
    both = chain("d x JOIN d y ON true JOIN d z ON true")
    assert inlined_tables(both) - inlined_tables(chain("d")) == 2 * 3
    # c = t 1 + u 1 + ON 1 + a 1 = 4; d = c's 4 + a 1 = 5; main = 5 + 5 + ON 1 + 1.
    assert size(chain("d x JOIN d y ON true")) == 12


def test_a_materialised_cte_read_by_a_not_materialised_one_is_not_copied():
    # A reference to d copies in d's one table reference (c), not c's t and u.
    sql = (
        "WITH c AS (SELECT a FROM t JOIN u ON true),"
        " d AS NOT MATERIALIZED (SELECT a FROM c) SELECT 1 FROM d x JOIN d y ON true"
    )
    assert inlined_tables(sql) == 2
    # c once (4); d = 1 (c) + 1 (a) = 2 at each reference; ON 1; the constant 1.
    assert size(sql) == 4 + 2 + 2 + 1 + 1


def test_a_schema_qualified_name_is_the_table_not_the_cte():
    assert size("WITH c AS (SELECT 1, 2) SELECT * FROM c") == 2 + 1 + (1 + 2)
    # main.c is a table of unknown width: c's body 2 + 1 + (1 + 32).
    assert size("WITH c AS (SELECT 1, 2) SELECT * FROM main.c") == 2 + 1 + 1 + W
    sql = (
        "WITH c AS NOT MATERIALIZED (SELECT a FROM t), d AS NOT MATERIALIZED"
        " (SELECT a FROM main.c) SELECT 1 FROM d"
    )
    assert inlined_tables(sql) == 1  # main.c, not c's t copied in


def test_a_cte_sees_the_ctes_before_it_not_after_it_nor_itself():
    # d's * expands c (2 columns): c 2 + d (1 + 3) + main 1 + (1 + 2).
    assert size("WITH c AS (SELECT 1, 2), d AS (SELECT * FROM c) SELECT * FROM d") == 10
    # c defined after d: in d it is a table (32 columns), and so is d's output.
    after = "WITH d AS (SELECT * FROM c), c AS (SELECT 1, 2) SELECT * FROM d"
    assert size(after) == (1 + 1 + W) + 2 + 1 + (1 + W)  # 70
    # c inside its own body is the table c.
    assert size("WITH c AS (SELECT * FROM c) SELECT * FROM c") == (1 + 1 + W) + 1 + (1 + W)


def test_a_recursive_cte_reads_itself_as_one_column_not_a_table():
    # Base SELECT 1 AS n: 1. Step SELECT * FROM r: r is the CTE being defined
    # (1 column, counts 1) + * (1 + 1) = 3. The CTE once: 4; main: 1 + (1 + 1).
    sql = "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT * FROM r) SELECT * FROM r"
    assert size(sql) == 4 + 1 + 2


def test_a_recursive_cte_is_as_wide_as_its_select_list():
    # Base 2; step r 1 + (+ n 1) 3 + m 1 + WHERE (< n 3) 3 = 8; main r 1 + * (1 + 2).
    sql = (
        "WITH RECURSIVE r AS (SELECT 1 AS n, 2 AS m UNION ALL"
        " SELECT n + 1, m FROM r WHERE n < 3) SELECT * FROM r"
    )
    assert size(sql) == 2 + 8 + 1 + (1 + 2)


def test_a_recursive_cte_read_in_a_subquery_of_its_step_is_one_column():
    # q = r 1 + t 1 + ON 1 + * (1 + 1 + 32) = 37; step q + (+ n 1) 3 + WHERE 3 = 43;
    # base 1; main r 1 + n 1.
    sql = (
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM"
        " (SELECT * FROM r JOIN t ON true) q WHERE n < 3) SELECT n FROM r"
    )
    assert size(sql) == 1 + 43 + 2


def test_ctes_of_a_set_operation_add_to_its_branches():
    # c (SELECT 1, 2) 2, then the branches 1 + 1: added, not merged bit-wise.
    assert size("WITH c AS (SELECT 1, 2) SELECT 1 UNION ALL SELECT 2") == 4


def test_the_guard_holds_the_estimate_and_the_copies_to_its_limits():
    def check(sql: str, **limits: int) -> None:
        check_query(sql, allowed_tables=None, limits=GuardLimits(**limits))

    # One expression node as written (the star), 1 + (1 + 32) = 34 as bound.
    check("SELECT * FROM t", expression_nodes=34)
    with pytest.raises(QueryRejected, match="more than 33 expression nodes and columns"):
        check("SELECT * FROM t", expression_nodes=33)
    # Written: t, c, c (3 table references); the copies add t twice.
    nm = _TWICE.format("NOT MATERIALIZED")
    check(nm, table_references=5)
    with pytest.raises(QueryRejected, match="more than 4 table references once its NOT MAT"):
        check(nm, table_references=4)


# -- * widths -----------------------------------------------------------------


def test_star_counts_table_width_per_unknown_table():
    assert size("SELECT * FROM t") == 1 + (1 + W)
    assert size("SELECT * FROM t JOIN u ON true") == 1 + 1 + 1 + (1 + 2 * W)
    assert size("SELECT *, * FROM t") == 1 + 2 * (1 + W)


def test_a_qualified_star_counts_only_its_relation():
    assert size("SELECT s.* FROM t s JOIN u ON true") == 3 + (1 + W)
    assert size("SELECT t.* FROM t, u") == 2 + (1 + W)  # by table name; a cross join has no ON
    # Only the named relation, whatever the others' names sort as: t 1 + (SELECT 1) 1
    # + ON 1 + b.* (1 + 1).
    assert size("SELECT b.* FROM t a JOIN (SELECT 1) b ON true") == 5


@pytest.mark.parametrize("materialized", ["", "NOT MATERIALIZED"])
def test_a_qualified_star_finds_a_cte_by_its_name_or_alias(materialized):
    body = 2 if materialized else 2 + 1  # bound at the reference, or once plus the reference
    for sql in ("SELECT c.* FROM c JOIN t ON true", "SELECT x.* FROM c x JOIN t ON true"):
        # ... + t 1 + ON 1 + c.* (1 + 2), not t's 32 columns too.
        assert size(f"WITH c AS {materialized} (SELECT 1, 2) {sql}") == body + 1 + 1 + 3


def test_star_over_a_subquery_counts_its_width():
    assert size("SELECT * FROM (SELECT 1)") == 1 + (1 + 1)
    # The subquery: a 1 + (+ b 1) 3 + * (1 + 32) over t (1) = 38, 34 columns wide.
    assert size("SELECT * FROM (SELECT a, b + 1, * FROM t)") == 38 + (1 + 34)
    # Doubling: the inner query is 1 + 2 x 33 = 67 and 64 wide; the outer 67 + 2 x 65.
    assert size("SELECT *, * FROM (SELECT *, * FROM t)") == 67 + 2 * 65
    # A scalar subquery or a window in a select list is one column, not a star.
    # Inner: t 1 + SUBQUERY (1 + 1) = 3; outer * (1 + 1).
    assert size("SELECT * FROM (SELECT (SELECT 1) FROM t)") == 3 + 2
    # Inner: t 1 + WINDOW 1 + a 1 = 3; outer * (1 + 1).
    assert size("SELECT * FROM (SELECT sum(a) OVER () FROM t)") == 3 + 2


def test_star_over_values_counts_a_row_width():
    # VALUES is SELECT * FROM <rows>: 4 constants + * (1 + 2) = 7, 2 wide.
    assert size("SELECT * FROM (VALUES (1, 2), (3, 4)) v(a, b)") == 7 + (1 + 2)
    assert size("SELECT * FROM (VALUES (1, 2, 3)) v") == (3 + 4) + (1 + 3)


def test_a_table_function_is_one_column_and_counts_its_arguments():
    # range(3): the function 1 + its constant 1, one column; t 1; ON 1; * (1 + 1 + 32).
    assert size("SELECT * FROM range(3) JOIN t ON true") == 2 + 1 + 1 + (1 + 1 + W)


def test_star_over_a_union_counts_the_widest_branch():
    # Branches 1 and 1 + 33 = 34 (1 and 32 wide): the union is 35 and 32 wide.
    assert size("SELECT * FROM (SELECT 1 UNION ALL SELECT * FROM t)") == 35 + (1 + W)
    assert size("SELECT * FROM (SELECT * FROM t UNION ALL SELECT 1)") == 35 + (1 + W)
    both = "SELECT * FROM (SELECT * FROM t UNION ALL SELECT * FROM u)"
    assert size(both) == 68 + (1 + W)
    # A chain of three is one node: 1 + 1 + 34, as wide as its widest.
    chain = "SELECT * FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT * FROM t)"
    assert size(chain) == 36 + (1 + W)


def test_star_over_a_union_by_name_counts_every_branch():
    sql = "SELECT * FROM (SELECT * FROM t UNION ALL BY NAME SELECT * FROM u)"
    assert size(sql) == 68 + (1 + 2 * W)


def test_pivot_adds_a_column_per_aggregate_and_combination_of_values():
    # The PIVOT: t 1 + sum(a) 2 + ON c 1 + its values 2, and 1 x 2 new columns;
    # 32 + 2 wide.
    assert size("SELECT * FROM t PIVOT (sum(a) FOR c IN (1, 2))") == (1 + 5 + 2) + (1 + W + 2)
    # Two aggregates (4), ON c with 3 values (4), ON d with 2 (3): 2 x 3 x 2 = 12 columns.
    two = "SELECT * FROM t PIVOT (sum(a), max(b) FOR c IN (1, 2, 3) d IN (4, 5))"
    assert size(two) == (1 + 11 + 12) + (1 + W + 12)
    # One value: one column per aggregate.
    assert size("SELECT * FROM t PIVOT (sum(a) FOR c IN (1))") == (1 + 4 + 1) + (1 + W + 1)
    # Values from an enum the guard cannot see count as one.
    assert size("SELECT * FROM t PIVOT (sum(a) FOR c IN e)") == (1 + 3 + 1) + (1 + W + 1)
    # Over a subquery 3 wide (counted once): 3 + 5 + 2 new columns, 3 + 2 wide.
    sub = "SELECT * FROM (SELECT 1 AS a, 2 AS c, 3 AS d) PIVOT (sum(a) FOR c IN (1, 2))"
    assert size(sub) == (3 + 5 + 2) + (1 + 3 + 2)


def test_unpivot_adds_no_columns():
    # No aggregates: t 1 + the two unpivoted columns 2, as wide as t.
    assert size("SELECT * FROM t UNPIVOT (v FOR k IN (a, b))") == 3 + (1 + W)


# -- parsed_tokens ------------------------------------------------------------

SIMPLE = "SELECT CASE x WHEN 1 THEN 2 WHEN 3 THEN 4 END"


def test_tokens_count_one_each_plus_the_statement():
    assert parsed_tokens("SELECT 1") == 1 + 2
    assert parsed_tokens("SELECT a, b FROM t") == 1 + 6
    assert parsed_tokens("/* a */ SELECT 1 -- b") == 1 + 2  # comments are not tokens
    # A string or quoted name that spells a keyword is one token, no CASE.
    assert parsed_tokens("SELECT 'CASE', \"when\"") == 1 + 4


def test_a_searched_case_copies_nothing():
    # SELECT CASE WHEN a THEN b ELSE c: 8 tokens (END not counted).
    assert parsed_tokens("SELECT CASE WHEN a THEN b ELSE c END") == 1 + 8
    # A longer condition adds its tokens once: ( x + 1 ) is 4 more than x.
    grown = parsed_tokens("SELECT CASE WHEN (x + 1) THEN 2 WHEN 3 THEN 4 END")
    assert grown - parsed_tokens("SELECT CASE WHEN x THEN 2 WHEN 3 THEN 4 END") == 4


def test_a_simple_case_copies_its_operand_into_each_when():
    # SELECT CASE, 2 WHENs, 1 THEN 2 3 THEN 4 (6), x once per WHEN (2).
    assert parsed_tokens(SIMPLE) == 1 + 1 + 1 + 2 + 6 + 2  # 13
    grown = parsed_tokens("SELECT CASE (x + 1) WHEN 1 THEN 2 WHEN 3 THEN 4 END")
    assert grown - parsed_tokens(SIMPLE) == 4 * 2  # the 4 extra tokens, per WHEN
    # One WHEN, one copy; ELSE is not a WHEN.
    assert parsed_tokens("SELECT CASE x WHEN 1 THEN 2 END") == 1 + 1 + (1 + 1 + 3 + 1)
    assert parsed_tokens("SELECT CASE x WHEN 1 THEN 2 ELSE 3 END") == 1 + 1 + (1 + 1 + 5 + 1)
    # A keyword that names a column (year) is an operand like any other.
    assert parsed_tokens("SELECT CASE year WHEN 1 THEN 2 WHEN 3 THEN 4 END") == 13


def test_a_where_inside_a_case_is_not_a_when():
    # The THEN's subquery adds its tokens once: WHERE true is 2 tokens, not a WHEN
    # (which would copy the operand, 3 tokens, again).
    plain = "SELECT CASE (x) WHEN 1 THEN (SELECT 2 {}) END"
    assert parsed_tokens(plain.format("WHERE true")) - parsed_tokens(plain.format("")) == 2


def test_keywords_are_read_in_any_case_and_through_comments():
    assert parsed_tokens(SIMPLE.lower()) == 13
    assert parsed_tokens("SELECT CASE/**/x WHEN/**/1 THEN 2 WHEN 3 THEN 4 END/**/") == 13
    # A comment after CASE does not make a searched CASE simple.
    assert parsed_tokens("SELECT CASE /* c */ WHEN a THEN b END") == 1 + 6


def test_nested_simple_cases_multiply():
    # A level with operand E is CASE + 2 WHENs + 6 tokens + 2 E: E(n) = 9 + 2 E(n-1),
    # E(0) = 1 (x): 11, 31, 71, ... = 10 x 2^n - 9.
    def nested(levels: int) -> str:
        return "SELECT " + "CASE " * levels + "x" + " WHEN 1 THEN 2 WHEN 3 THEN 4 END" * levels

    assert parsed_tokens(nested(2)) == 2 + 31
    assert parsed_tokens(nested(3)) == 2 + 71
    assert parsed_tokens(nested(9)) == 2 + 10 * 2**9 - 9


def test_a_case_in_a_then_branch_adds_without_multiplying():
    # The inner CASE is 11 as above; the outer: CASE, 2 WHENs, 1 THEN <11> 6 THEN 7
    # (5 + 11), x twice: 21.
    sql = "SELECT CASE x WHEN 1 THEN CASE y WHEN 2 THEN 3 WHEN 4 THEN 5 END WHEN 6 THEN 7 END"
    assert parsed_tokens(sql) == 2 + 21


def test_an_unbalanced_case_is_still_counted():
    assert parsed_tokens(SIMPLE.removesuffix(" END")) == 13
    assert parsed_tokens("SELECT CASE x") == 2 + (1 + 1)  # no WHEN: the operand once
    # The inner CASE (11) is the outer one's operand, which has no WHEN: 1 + 11.
    assert parsed_tokens("SELECT CASE CASE x WHEN 1 THEN 2 WHEN 3 THEN 4") == 2 + 12


@pytest.mark.parametrize("sql", ["SELECT 1 END", "SELECT WHEN 1"])
def test_a_stray_end_or_when_is_one_token(sql):
    # Counted before anything parses the text: any token sequence is counted.
    assert parsed_tokens(sql) == 1 + 3
