"""The guard's limits (query/sql_limits.py), pinned at their exact boundaries.

Every limit is tested where it bites: at the limit the query passes, one past
it is refused with the code a client sees. Most go through the public
`check_query`; the function categories are checked on `denied` directly too.
"""

from __future__ import annotations

import pytest

from api_service.errors import QueryRejected
from api_service.query.sql_guard import GuardLimits, _parse_tree, check_query
from api_service.query.sql_limits import (
    AMPLIFYING_FUNCTIONS,
    DENIED_PREFIXES,
    MAX_AMPLIFY,
    MAX_CONCAT_GROWTH,
    MAX_SERIES_ROWS,
    AmplifyBudget,
    arguments,
    denied,
)

ALLOWED = {"inventory"}
SERIES = ("range", "generate_series")


def passes(sql: str, **kwargs: object) -> None:
    assert check_query(sql, allowed_tables=ALLOWED, **kwargs)  # type: ignore[arg-type]


def refused(sql: str, code: str = "function_not_allowed", **kwargs: object) -> str:
    with pytest.raises(QueryRejected) as refusal:
        check_query(sql, allowed_tables=ALLOWED, **kwargs)  # type: ignore[arg-type]
    assert refusal.value.code == code, refusal.value
    return str(refusal.value)


def reads(n: int) -> str:
    """n column reads, comma separated."""
    return ", ".join(["warehouse"] * n)


def test_the_limits_are_the_documented_numbers():
    assert (MAX_AMPLIFY, MAX_SERIES_ROWS, MAX_CONCAT_GROWTH) == (10_000, 1_000_000, 64)


# -- structural limits (GuardLimits defaults) ---------------------------------


def _tables(n: int) -> str:  # n table references, n - 1 set operations
    return " UNION ALL ".join(["SELECT 1 FROM inventory"] * n)


def _joins(n: int) -> str:  # n joins, n + 1 table references
    rest = " ".join(f"JOIN inventory a{i} ON a{i}.id = a{i - 1}.id" for i in range(1, n + 1))
    return f"SELECT count(*) FROM inventory a0 {rest}"


def _unions(n: int) -> str:  # n set operations
    return " UNION ALL ".join(["SELECT 1"] * (n + 1))


def _nodes(n: int) -> str:  # n constants: n expression nodes, bound size n
    return "SELECT " + ", ".join(["1"] * n)


def _depth(n: int) -> str:  # SELECT node 1, n - 2 nested calls, the constant: depth n
    return "SELECT " + "abs(" * (n - 2) + "1" + ")" * (n - 2)


@pytest.mark.parametrize(
    ("build", "limit", "what"),
    [
        (_tables, 32, "more than 32 table references"),
        (_joins, 24, "more than 24 joins"),
        (_unions, 32, "more than 32 set operations"),
        (_nodes, 5_000, "more than 5000 expression nodes"),
        (_depth, 100, "nested deeper than 100 levels"),
    ],
)
def test_structural_limits_hold_exactly_at_their_defaults(build, limit, what):
    assert GuardLimits() == GuardLimits(32, 24, 32, 5_000, 100)
    passes(build(limit))
    assert what in refused(build(limit + 1), "query_too_complex")


# -- denied functions ---------------------------------------------------------


@pytest.mark.parametrize("prefix", DENIED_PREFIXES)
def test_every_denied_prefix_refuses_a_call(prefix):
    assert denied(f"{prefix}anything")
    assert refused(f"SELECT {prefix}x(1)") == f"function {prefix}x() is not allowed"


@pytest.mark.parametrize(
    "name", ["query", "json_serialize_plan", "getenv", "version", "pg_sleep", "nextval"]
)
def test_denied_functions_of_each_category_are_refused(name):
    assert denied(name)
    assert refused(f"SELECT {name}(1)") == f"function {name}() is not allowed"


def test_describing_pg_functions_and_ordinary_ones_are_allowed():
    assert not denied("pg_typeof") and not denied("pg_size_pretty") and not denied("abs")
    assert denied("pg_get_viewdef")  # a pg_ function not on the allowed list
    passes("SELECT pg_typeof(id), pg_size_pretty(id), abs(id) FROM inventory")


# -- sizes and counts: literal, at most MAX_AMPLIFY ---------------------------


@pytest.mark.parametrize(
    "template",
    [
        "SELECT lpad(warehouse, {}, ' ') FROM inventory",
        "SELECT rpad(warehouse, {}, ' ') FROM inventory",
        "SELECT bar(quantity, 0, 100, {}) FROM inventory",  # the width, not the range
        "SELECT to_base(id, 2, {}) FROM inventory",
        "SELECT equi_width_bins(0, 1, {}, false)",
        "SELECT repeat('x', {})",
        "SELECT list_resize([1], {})",
        "SELECT array_resize([1], {})",
        "SELECT repeat('x', CAST({} AS INTEGER))",  # a cast literal is still the literal
    ],
)
def test_sizes_and_counts_are_bounded_exactly_at_max_amplify(template):
    passes(template.format(10_000))
    message = refused(template.format(10_001))
    assert "of at most 10000" in message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT bar(quantity, 0, 20000, 40) FROM inventory",  # a wide range, a small bar
        "SELECT to_base(id, 10000, 8) FROM inventory",  # the radix is not the size
        "SELECT lpad(warehouse, 5, repeat('ab', 10000)) FROM inventory",  # nor the fill
    ],
)
def test_only_the_size_argument_is_bounded(sql):
    passes(sql)


def test_the_size_argument_of_bar_and_to_base_is_its_own():
    refused("SELECT bar(1, 0, 1, 10001)")
    refused("SELECT to_base(1, 2, 10001)")
    refused("SELECT equi_width_bins(0, 1, 10001, false)")


def test_a_computed_size_is_refused():
    assert "literal count" in refused("SELECT repeat('x', 5000 + 5000)")
    assert "literal size" in refused("SELECT lpad('x', id, ' ') FROM inventory")
    # ... and so is a missing one.
    assert "literal size" in refused("SELECT lpad(warehouse) FROM inventory")
    assert "literal count" in refused("SELECT repeat('x')")


# Each bounded call with its size read from the data.
COMPUTED_SIZES = {
    "lpad": "lpad(warehouse, id, ' ')",
    "rpad": "rpad(warehouse, id, ' ')",
    "bar": "bar(quantity, 0, 100, id)",
    "to_base": "to_base(id, 2, id)",
    "equi_width_bins": "equi_width_bins(0, 1, id, false)",
    "repeat": "repeat(warehouse, id)",
    "list_resize": "list_resize([1], id)",
    "array_resize": "array_resize([1], id)",
    "range": "range(0, id)",
    "generate_series": "generate_series(0, id)",
}


def test_the_exported_amplifying_functions_are_exactly_the_bounded_calls():
    """sql_guard exports AMPLIFYING_FUNCTIONS as the calls whose size must be a
    literal: it names every one of them and nothing else."""
    assert set(COMPUTED_SIZES) == AMPLIFYING_FUNCTIONS


@pytest.mark.parametrize("name", sorted(COMPUTED_SIZES))
def test_every_amplifying_function_refuses_a_size_read_from_the_data(name):
    assert "needs" in refused(f"SELECT {COMPUTED_SIZES[name]} FROM inventory")


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("SELECT to_base(id) FROM inventory", "to_base() needs a literal size"),
        ("SELECT bar(quantity, 0) FROM inventory", "bar() needs a literal size"),
        ("SELECT equi_width_bins(0) FROM inventory", "equi_width_bins() needs a literal size"),
        # inside a joined value (sized before the call itself is checked)
        ("SELECT concat(list_resize([warehouse])) FROM inventory", "list_resize() needs"),
        ("SELECT concat(array_resize([warehouse])) FROM inventory", "array_resize() needs"),
    ],
)
def test_a_call_that_stops_before_its_size_argument_is_refused(sql, what):
    """Arguments missing up to the size or count: a refusal, not an IndexError (a 500)."""
    assert refused(sql).startswith(what)


def test_a_unary_plus_is_no_literal_and_no_negation():
    """`-n` is the literal -n; `+n` is a call like any computed count (read as -n,
    repeat('x', +20000) would pass as a count below one and build 20000 copies)."""
    assert "literal count" in refused("SELECT repeat('x', +20000)")
    assert "literal size" in refused("SELECT lpad('x', +20000, ' ')")


# -- the repeat-like budget: a product over the whole query -------------------


def test_counts_multiply_over_the_query_up_to_max_amplify():
    passes("SELECT repeat('x', 100), repeat('y', 100)")  # 100 x 100 = 10000
    message = refused("SELECT repeat('x', 100), repeat('y', 101)")  # 10100
    assert message == "repeat(): the repeat-like counts of this query multiply past 10000"
    passes("SELECT repeat('x', 100) FROM (SELECT repeat('y', 100))")  # across levels too
    refused("SELECT repeat('x', 101) FROM (SELECT repeat('y', 100))")


def test_counts_of_zero_or_one_spend_nothing():
    passes("SELECT repeat('x', 1), repeat('y', 10000)")
    passes("SELECT repeat('x', -5), repeat('y', 10000)")
    # A zero count is not a reset: 1 x 10000 x 2.
    refused("SELECT repeat('x', 0), repeat('y', 10000), repeat('z', 2)")


def test_scalar_series_spend_their_span():
    # range(n) spans 0..n: n + 1 elements (an upper bound for range, exact for
    # generate_series).
    passes("SELECT range(99), repeat('x', 100)")  # 100 x 100
    refused("SELECT range(100), repeat('x', 100)")  # 101 x 100
    passes("SELECT range(10, 0), repeat('x', 10000)")  # empty: spends 1


@pytest.mark.parametrize("name", SERIES)
def test_a_series_of_an_odd_length_spends_its_whole_span(name):
    passes(f"SELECT {name}(1), repeat('x', 5000)")  # 0..1: 2 x 5000
    refused(f"SELECT {name}(1), repeat('x', 5001)")
    passes(f"SELECT {name}(3), repeat('x', 2500)")  # 0..3: 4 x 2500
    refused(f"SELECT {name}(3), repeat('x', 2501)")
    refused(f"SELECT {name}(99), repeat('x', 101)")  # 100 x 101


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize(
    ("at_limit", "past_limit"),
    [
        ("9999", "10000"),  # 0..n
        ("1, 10000", "0, 10000"),
        ("0, 19998, 2", "0, 19999, 2"),  # ceil(19999 / 2) + 1 = 10001
        ("9999, 0, -1", "10000, 0, -1"),
        ("9999, 0, -CAST(1 AS INTEGER)", "10000, 0, -CAST(1 AS INTEGER)"),  # a negated literal
    ],
)
def test_scalar_series_span_at_most_max_amplify(name, at_limit, past_limit):
    passes(f"SELECT {name}({at_limit})")
    assert "spanning at most 10000" in refused(f"SELECT {name}({past_limit})")


@pytest.mark.parametrize(
    "args",
    ["0, 20000 - 10000", "0, abs(20000)", "0, id", "0, 10, 0", "1, 2, 1, 1", "", "0.5, 3"],
)
def test_series_that_are_not_integer_literals_are_refused(args):
    # Computed, read from the data, a zero step, four arguments, none, a decimal.
    refused(f"SELECT range({args}) FROM inventory")


# -- values joined from the data: MAX_CONCAT_GROWTH -------------------------------

# (call, how many literal arguments come before the joined ones)
JOINING = [
    ("concat({})", 0),
    ("concat_ws(',', {})", 1),
    ("list_concat({})", 0),
    ("list_cat({})", 0),
    ("array_concat({})", 0),
    ("array_cat({})", 0),
    ("list_value({})", 0),
    ("array_value({})", 0),
    ("list_pack({})", 0),
    ("struct_pack({})", 0),
    ("row({})", 0),
    ("map({})", 0),
    ("[{}]", 0),
]


@pytest.mark.parametrize(("call", "_"), JOINING)
def test_a_value_joins_at_most_max_concat_growth_reads(call, _):
    passes(f"SELECT {call.format(reads(64))}, 'x' FROM inventory")
    message = refused(f"SELECT {call.format(reads(65))} FROM inventory")
    assert "their sizes multiply past 64x" in message


@pytest.mark.parametrize("n", [64, 65])
def test_chained_concatenation_and_format_count_every_read(n):
    check = passes if n == 64 else refused
    check("SELECT " + " || ".join(["warehouse"] * n) + " FROM inventory")
    check(f"SELECT printf('{'%s' * n}', {reads(n)}) FROM inventory")
    check(f"SELECT format('{'{}' * n}', {reads(n)}) FROM inventory")
    # A literal joined in is no read: 64 reads and a literal still pass.
    check(f"SELECT concat({reads(n)}, 'x', 1) FROM inventory")


def test_concat_ws_does_not_count_its_separator():
    passes(f"SELECT concat_ws(warehouse, {reads(64)}) FROM inventory")


def test_growth_multiplies_across_levels_and_not_within_one():
    inner = "(SELECT concat({}) AS s FROM inventory)"
    passes(f"SELECT s || s FROM {inner.format(reads(32))}")  # 32 x 2
    refused(f"SELECT s || s FROM {inner.format(reads(33))}")  # 33 x 2
    refused(f"SELECT s || s || s FROM {inner.format(reads(32))}")  # 32 x 3
    passes(f"SELECT concat({reads(8)}) FROM (SELECT concat({reads(8)}) AS warehouse)")
    refused(f"SELECT concat({reads(9)}) FROM (SELECT concat({reads(8)}) AS warehouse)")
    # Independent values of one level: the largest counts, not their product.
    passes(f"SELECT concat({reads(64)}), concat({reads(64)}), s || s FROM inventory")


def test_growth_also_spends_the_repeat_budget():
    passes(f"SELECT repeat('x', 156), concat({reads(64)}) FROM inventory")  # 156 x 64 = 9984
    message = refused(f"SELECT repeat('x', 157), concat({reads(64)}) FROM inventory")
    assert "multiply past 10000" in message  # 10048


@pytest.mark.parametrize(
    ("copies", "count"),
    [
        ("repeat(warehouse, {})", 64),
        ("list_resize([1], {}, warehouse)", 64),  # the fill is copied
        ("array_resize([1], {}, warehouse)", 64),
    ],
)
def test_copies_of_a_value_read_from_the_data_are_joined_reads(copies, count):
    passes(f"SELECT {copies.format(count)} FROM inventory")
    assert "64x" in refused(f"SELECT {copies.format(count + 1)} FROM inventory")


def test_copies_of_a_computed_count_are_too_many():
    # concat is checked before the repeat inside it: an unknown count is MAX_AMPLIFY copies.
    assert "64x" in refused("SELECT concat(repeat(warehouse, id)) FROM inventory")


def test_copies_of_literals_or_nulls_are_no_reads():
    passes("SELECT repeat('x', 10000), list_resize([warehouse], 1) FROM inventory")
    passes("SELECT list_resize([warehouse], 10000) FROM inventory")  # pads with NULL
    # ... nor when joined with reads: 64 columns and 10 copies of a literal are 64 reads.
    passes(f"SELECT concat(repeat('-', 10), {reads(64)}) FROM inventory")


def test_copies_multiply_the_reads_of_the_copied_value():
    # 2 reads copied 3 times are 6 reads: 6 + 58 = 64 (not 2 ** 3 or 3 ** 2).
    passes(f"SELECT concat(repeat(warehouse || warehouse, 3), {reads(58)}) FROM inventory")
    refused(f"SELECT concat(repeat(warehouse || warehouse, 3), {reads(59)}) FROM inventory")


def test_joined_sizes_do_not_depend_on_the_order_they_are_asked_in():
    """AmplifyBudget.joined_size is memoised: sizing a part of an expression
    first (a nested call checked on its own) leaves the whole's size the same."""
    tree = _parse_tree("SELECT concat(warehouse, concat(warehouse, warehouse), warehouse)")
    outer = tree["statements"][0]["node"]["select_list"][0]
    inner = arguments(outer)[1]
    budget = AmplifyBudget()
    assert budget.joined_size(inner) == 2
    assert budget.joined_size(outer) == 4
    assert AmplifyBudget().joined_size(outer) == 4


@pytest.mark.parametrize("name", ["replace", "regexp_replace"])
def test_a_replacement_must_not_read_the_data(name):
    passes(f"SELECT {name}(warehouse, warehouse, 'b') FROM inventory")  # the pattern may
    message = refused(f"SELECT {name}(warehouse, 'a', warehouse) FROM inventory")
    assert message == f"{name}() needs a replacement that reads no column"


# -- lambdas that build list elements ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "x || 'a'",
        "x.f || 'a'",  # a field of its own parameter
        "x + quantity",  # arithmetic, comparisons and predicates have a fixed size
        "x = warehouse",
        "warehouse IS NULL",
        "warehouse IN ('a', 'b')",
        "NOT (warehouse = 'a')",
        "list_transform(string_split(x, '-'), lambda y: y || 'a')",  # and an inner one's
    ],
)
def test_a_lambda_builds_from_its_own_parameters(body):
    passes(f"SELECT list_transform(string_split(warehouse, ','), lambda x: {body}) FROM inventory")


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("x || warehouse", "column 'warehouse'"),
        # read in either order next to the parameter or a predicate
        ("concat(x, warehouse)", "column 'warehouse'"),
        ("concat(warehouse, x)", "column 'warehouse'"),
        ("concat(x = 'a', warehouse)", "column 'warehouse'"),
        ("concat(warehouse, x = 'a')", "column 'warehouse'"),
        ("inventory.x", "column 'inventory.x'"),
        ("$p", "a parameter"),
        ("(SELECT 'a')", "a subquery"),
    ],
)
def test_a_lambda_that_copies_other_values_is_refused(body, what):
    message = refused(
        f"SELECT list_transform(string_split(warehouse, ','), lambda x: {body}) FROM inventory"
    )
    assert f"not {what}" in message


def test_a_lambda_over_columns_picked_by_a_columns_selector_passes():
    """Only the LAMBDA argument is the element builder: COLUMNS(lambda c: ...)
    (a STAR node whose selector holds a lambda over column names and a `*`)
    picks the lists to transform and builds no element."""
    passes(
        "SELECT list_transform(COLUMNS(lambda c: c LIKE 'tag%'), lambda x: upper(x)) FROM inventory"
    )


def test_a_reducing_lambda_reads_both_its_parameters():
    passes("SELECT list_reduce(string_split(warehouse, ','), lambda a, b: a || b) FROM inventory")
    refused(
        "SELECT list_reduce(string_split(warehouse, ','), lambda a, b: a || warehouse) FROM inventory"
    )


# -- printf and format --------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT printf('%9999d', id) FROM inventory",
        "SELECT printf('%.9999f', 1.5)",
        "SELECT format('{:>9999}', warehouse) FROM inventory",
        "SELECT format('{{x}} {}', warehouse) FROM inventory",  # escaped braces
        "SELECT format('{{{}}}', warehouse) FROM inventory",  # a field inside escaped ones
    ],
)
def test_literal_formats_below_five_digits_pass(sql):
    passes(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT printf('%10000d', id) FROM inventory",
        "SELECT printf('%.10000f', 1.5)",
        "SELECT format('{:>10000}', warehouse) FROM inventory",
        "SELECT printf('%*d', 5, id) FROM inventory",
        "SELECT printf('%-.*f', 5, 1.5)",
        "SELECT format('{:>{}}', warehouse, 5) FROM inventory",
    ],
)
def test_wide_or_computed_widths_are_refused(sql):
    assert refused(sql).endswith("widths and precisions must be literals below 10000")


def test_a_format_must_be_a_literal():
    assert "needs a literal format string" in refused("SELECT printf(warehouse) FROM inventory")
    assert "needs a literal format string" in refused("SELECT format(warehouse, 1) FROM inventory")


# -- range / generate_series as table functions -------------------------------


def table(sql: str) -> None:
    passes(sql, allowed_table_functions=SERIES)


def table_refused(sql: str) -> str:
    return refused(sql, allowed_table_functions=SERIES)


@pytest.mark.parametrize("name", SERIES)
@pytest.mark.parametrize(
    ("at_limit", "past_limit"),
    [
        ("999999", "1000000"),
        ("1, 1000000", "0, 1000000"),
        ("0, 1999998, 2", "0, 1999999, 2"),
        ("999999, 0, -1", "1000000, 0, -1"),
    ],
)
def test_series_tables_span_at_most_max_series_rows(name, at_limit, past_limit):
    table(f"SELECT count(*) FROM {name}({at_limit})")
    message = table_refused(f"SELECT count(*) FROM {name}({past_limit})")
    assert message == f"{name}() may produce at most 1000000 rows"


@pytest.mark.parametrize(
    "args",
    [
        "DATE '2024-01-01', DATE '2024-12-31', INTERVAL 1 DAY",
        "TIMESTAMP '2024-01-01', TIMESTAMP '2024-01-02', INTERVAL 1 HOUR",
        "CAST('2024-01-01' AS TIMESTAMPTZ), CAST('2024-01-02' AS TIMESTAMPTZ), INTERVAL 1 HOUR",
    ],
)
def test_series_tables_of_dates_and_timestamps_pass(args):
    table(f"SELECT * FROM range({args})")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("0, (SELECT 5)", "range() needs constant arguments"),
        ("0, random()", "range() needs constant arguments"),
        ("", "range() needs constant arguments"),
        ("0.5, 3", "range() takes integer literals, or dates/timestamps and an interval"),
        ("0.5", "range() takes integer literals, or dates/timestamps and an interval"),
        # a cast to an integer type of a non-integer is no integer literal, nor a date
        (
            "CAST(0.5 AS BIGINT), 100000000000",
            "range() takes integer literals, or dates/timestamps and an interval",
        ),
        # a column read is not constant, even with a date first (a series per row)
        (
            "DATE '2024-01-01', inventory.shipped, INTERVAL 1 DAY",
            "range() needs constant arguments",
        ),
        (
            "CAST('2024-01-01' AS VARCHAR), CAST('2024-02-01' AS VARCHAR), INTERVAL 1 DAY",
            "range() takes integer literals, or dates/timestamps and an interval",
        ),
    ],
)
def test_series_tables_of_anything_else_are_refused(args, message):
    assert table_refused(f"SELECT * FROM range({args})") == message
