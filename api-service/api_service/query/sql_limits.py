"""What the SQL guard bounds beyond the table policy: the query's size and shape,
and the functions a caller may call with which arguments.

Structural limits (`GuardLimits`, named settings with safe defaults): DuckDB's
planner cost grows steeply with the number of joined tables (150 self-joins
plan for seconds and ignore interrupts until planning ends), so the guard
counts table references, joins, set operations, expression nodes and the
nesting depth of expressions before anything is planned.

Functions, by category (decided over `SELECT DISTINCT function_name FROM
duckdb_functions()` of the pinned DuckDB; `test_every_duckdb_function_is_classified`
fails when an upgrade brings a name nobody reviewed):

- denied: functions that bind, plan or run SQL held in a string
  (`json_serialize_plan` and siblings: an oracle on tables the caller may not
  read), that read the catalog, settings, session or engine state
  (`current_setting`, `pg_*`, `has_*_privilege`, `stats`, ...), that sleep,
  or that write anything;
- bounded: functions that build one large value from a small input. DuckDB
  allocates such values outside its memory limit and checks for interrupts
  only once they are built, so their size arguments must be integer
  literals: `lpad`/`rpad`/`bar`/`to_base`/`equi_width_bins` (the size is
  absolute) at most `MAX_AMPLIFY`; `repeat`/`list_resize`/`array_resize` and
  the scalar `range`/`generate_series` multiply, so the product of their
  counts over the whole query is at most `MAX_AMPLIFY`; `printf`/`format`
  need a literal format string without computed (`*`, nested `{}`) or huge
  widths and precisions. The table functions `range`/`generate_series` take
  constant arguments, and integer ones span at most `MAX_SERIES_ROWS` rows;
- growing: calls that join values read from the data (`s || s`, `concat(s, s,
  s)`, `list_concat`, `[s, s]`, `format('{}{}', s, s)`, ...) make a value as
  large as the values they join: an expression's size counts the column reads
  joined into it (`a || ' ' || b` holds 2). Chained through CTE or subquery
  levels the sizes multiply (12 levels of `s || s` over a 4 KB string build
  16 MB per value and GBs per vector, allocated outside DuckDB's memory limit
  and before it checks for an interrupt), so the product over the query's
  levels of each level's largest value is at most `MAX_CONCAT_GROWTH`, and it
  also spends the repeat-like budget. Independent expressions of one level
  do not multiply: `SELECT a || b, c || d, ...` or one label joined from
  twenty columns is fine. `replace`/`regexp_replace` take a constant
  replacement (one that reads a column multiplies the size by the number of
  matches). `repeat(s, n)` of a value read from the data or a parameter joins
  `n` copies; a lambda that builds list elements reads only its own
  parameters where it builds the value (`[s FOR x IN l]` holds len(l) copies
  of `s`, and `l` can be as long as the data makes it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from api_service.errors import QueryRejected

__all__ = [
    "AMPLIFYING_FUNCTIONS",
    "DENIED_FUNCTIONS",
    "DENIED_PREFIXES",
    "MAX_AMPLIFY",
    "MAX_CONCAT_GROWTH",
    "MAX_SERIES_ROWS",
    "AmplifyBudget",
    "GuardLimits",
    "check_function",
    "check_series_table_function",
]


@dataclass(frozen=True)
class GuardLimits:
    """Structural limits on one query (GUARD_MAX_* settings)."""

    table_references: int = 32
    joins: int = 24
    set_operations: int = 32
    expression_nodes: int = 5_000
    expression_depth: int = 100


# Scalar functions refused everywhere, by category.
_SQL_IN_STRINGS = {
    "json_serialize_plan",
    "json_serialize_sql",
    "json_deserialize_sql",
    "json_execute_serialized_sql",
    "query",
    "query_table",
}
_CATALOG_AND_SETTINGS = {
    "current_setting",
    "current_schema",
    "current_schemas",
    "current_database",
    "current_catalog",
    "current_query",
    "current_query_id",
    "current_connection_id",
    "current_transaction_id",
    "txid_current",
    "in_search_path",
    "col_description",
    "obj_description",
    "shobj_description",
    "get_block_size",
    "stats",
    "version",
    "getenv",
    "getvariable",
    "which_secret",
    "parse_duckdb_log_message",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
}
_SLEEPING = {"sleep", "sleep_ms", "pg_sleep"}
_STATEFUL = {"write_log", "setseed", "setval", "nextval", "currval"}
DENIED_FUNCTIONS = frozenset(_SQL_IN_STRINGS | _CATALOG_AND_SETTINGS | _SLEEPING | _STATEFUL)
DENIED_PREFIXES = (
    "duckdb_",
    "pragma_",
    "read_",
    "sqlite_",
    "parquet_",
    "iceberg_",
    "delta_",
    "pg_",
    "has_",
    "__internal",
)
# pg_* functions that only describe a value, kept for compatibility.
_ALLOWED_PG = frozenset({"pg_typeof", "pg_size_pretty"})

MAX_AMPLIFY = 10_000
MAX_SERIES_ROWS = 1_000_000
MAX_CONCAT_GROWTH = 64
# name -> index of the argument that sets the output's absolute size.
_ABSOLUTE_SIZE = {"lpad": 1, "rpad": 1, "bar": 3, "to_base": 2, "equi_width_bins": 2}
# name -> index of the count that multiplies the input.
_MULTIPLYING = {"repeat": 1, "list_resize": 1, "array_resize": 1}
# name -> index of the value the result holds `count` copies of (the input of
# repeat, the fill of list_resize): read from the data, it is as large as the
# data makes it, so the copies count as joined values (a 200 KB parameter
# repeated 10 000 times is 2 GB in one value).
_COPIED = {"repeat": 0, "list_resize": 2, "array_resize": 2}
_SERIES = frozenset({"range", "generate_series"})
AMPLIFYING_FUNCTIONS = frozenset(_ABSOLUTE_SIZE) | frozenset(_MULTIPLYING) | _SERIES
_FORMAT_FUNCTIONS = frozenset({"printf", "format"})
# Calls whose result holds each argument: name -> index of the first that counts.
_JOINING = {
    "||": 0,
    "concat": 0,
    "concat_ws": 1,
    "list_concat": 0,
    "list_cat": 0,
    "array_concat": 0,
    "array_cat": 0,
    "list_value": 0,
    "array_value": 0,
    "list_pack": 0,
    "struct_pack": 0,
    "row": 0,
    "map": 0,
    "printf": 1,
    "format": 1,
}
_REPLACING = {"replace": 2, "regexp_replace": 2}  # name -> the replacement's index
# Lambda functions whose result holds what the lambda returns, once per element.
_TRANSFORMING = frozenset(
    {
        "list_transform",
        "array_transform",
        "list_apply",
        "array_apply",
        "apply",
        "list_reduce",
        "array_reduce",
        "reduce",
    }
)
# Expressions whose value has a fixed size whatever they read (a predicate, a
# number): a lambda may read other columns inside them.
_FIXED_SIZE_CLASSES = frozenset({"COMPARISON", "CONJUNCTION", "BETWEEN"})
_FIXED_SIZE_OPERATORS = frozenset(
    {"OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN", "COMPARE_NOT_IN"}
)
_ARITHMETIC = frozenset({"+", "-", "*", "/", "//", "%", "**", "^"})
_WIDE_FORMAT = re.compile(r"\d{5,}")
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")
_STAR_WIDTH = re.compile(r"%[^a-zA-Z%]*\*")


class AmplifyBudget:
    """One query's amplification: the product of its repeat-like counts, and per
    query level (SELECT node) the largest number of column reads joined into one
    value there (their product bounds any chain of levels)."""

    def __init__(self) -> None:
        self.product = 1
        self._levels: dict[int, int] = {}
        self._sizes: dict[int, int] = {}  # id(expression) -> joined reads, memoised

    @property
    def growth(self) -> int:
        return math.prod(self._levels.values())

    def grow(self, name: str, level: int, size: int) -> None:
        if size <= self._levels.get(level, 1):
            return
        self._levels[level] = size
        if self.growth > MAX_CONCAT_GROWTH:
            raise QueryRejected(
                f"{name}(): this query joins values read from the data into ever larger"
                f" ones, level after level (their sizes multiply past {MAX_CONCAT_GROWTH}x);"
                " build fewer copies of a column into one value",
                "function_not_allowed",
            )
        self._check(name)

    def spend(self, name: str, count: int) -> None:
        self.product *= max(1, count)
        self._check(name)

    def _check(self, name: str) -> None:
        if self.product * self.growth > MAX_AMPLIFY:
            raise QueryRejected(
                f"{name}(): the repeat-like counts of this query multiply past {MAX_AMPLIFY}",
                "function_not_allowed",
            )

    def joined_size(self, node: Any) -> int:
        """How many column reads an expression joins into one value: a joining
        call adds its arguments' sizes, any other expression is as large as its
        largest argument. Iterative and memoised (the guard runs this on each
        joining call of a chain before the walk has checked its depth)."""
        stack: list[tuple[Any, bool]] = [(node, False)]
        while stack:
            current, ready = stack.pop()
            if id(current) in self._sizes:
                continue
            children = _children(current)
            if not ready:
                stack.append((current, True))
                stack.extend((child, False) for child in children)
                continue
            sizes = [self._sizes[id(child)] for child in children]
            if isinstance(current, dict) and current.get("class") in _READS:
                size = 1
            elif isinstance(current, dict) and _joining_start(current) is not None:
                start = _joining_start(current) or 0
                args = arguments(current)
                size = sum(self._sizes[id(a)] for a in args[start:] if id(a) in self._sizes)
            elif isinstance(current, dict) and _copies(current) is not None:
                value, count = _copies(current) or (0, 0)
                size = max(max(sizes, default=0), count * self._sizes.get(id(value), 0))
            else:
                size = max(sizes, default=0)
            self._sizes[id(current)] = size
        return self._sizes[id(node)]


_READS = frozenset({"COLUMN_REF", "SUBQUERY", "PARAMETER", "STAR"})


def _children(node: Any) -> list[Any]:
    if isinstance(node, list):
        return [v for v in node if isinstance(v, dict | list)]
    if isinstance(node, dict) and node.get("class") not in _READS:
        return [v for v in node.values() if isinstance(v, dict | list)]
    return []


def _copies(node: dict[str, Any]) -> tuple[Any, int] | None:
    """(the copied argument, how many copies) of repeat/list_resize; a count
    that is not a literal counts as MAX_AMPLIFY (check_function refuses it)."""
    if node.get("class") != "FUNCTION":
        return None
    name = str(node.get("function_name", "")).lower()
    args = arguments(node)
    if name not in _COPIED or len(args) <= _COPIED[name]:
        return None
    count = _literal_arg(args, _MULTIPLYING[name])
    return args[_COPIED[name]], MAX_AMPLIFY if count is None else max(count, 0)


def _joining_start(node: dict[str, Any]) -> int | None:
    if node.get("class") != "FUNCTION":
        return None
    return _JOINING.get(str(node.get("function_name", "")).lower())


def denied(name: str) -> bool:
    if name in DENIED_FUNCTIONS:
        return True
    return name.startswith(DENIED_PREFIXES) and name not in _ALLOWED_PG


def check_function(name: str, node: dict[str, Any], budget: AmplifyBudget, level: int = 0) -> None:
    """Refuse a call to `name` (lower case) the rules above do not allow; `level`
    names the query level (SELECT node) the call is part of."""
    if denied(name):
        raise QueryRejected(f"function {name}() is not allowed", "function_not_allowed")
    args = arguments(node)
    if name in _ABSOLUTE_SIZE:
        size = _literal_arg(args, _ABSOLUTE_SIZE[name])
        if size is None or size > MAX_AMPLIFY:
            raise QueryRejected(
                f"{name}() needs a literal size of at most {MAX_AMPLIFY}", "function_not_allowed"
            )
    elif name in _MULTIPLYING:
        count = _literal_arg(args, _MULTIPLYING[name])
        if count is None or count > MAX_AMPLIFY:
            raise QueryRejected(
                f"{name}() needs a literal count of at most {MAX_AMPLIFY}", "function_not_allowed"
            )
        budget.spend(name, count)
        budget.grow(name, level, budget.joined_size(node))
    elif name in _SERIES:
        span = _series_span(args)
        if span is None or span > MAX_AMPLIFY:
            raise QueryRejected(
                f"{name}() as a value needs integer literals spanning at most {MAX_AMPLIFY}"
                " elements",
                "function_not_allowed",
            )
        budget.spend(name, span)
    elif name in _FORMAT_FUNCTIONS:
        _check_format(name, args)
    elif name in _TRANSFORMING:
        _check_lambda_reads(name, args)
    if name in _JOINING:
        budget.grow(name, level, budget.joined_size(node))
    elif name in _REPLACING and _reads_data(args[_REPLACING[name] :][:1]):
        raise QueryRejected(
            f"{name}() needs a replacement that reads no column", "function_not_allowed"
        )


def _reads_data(node: Any) -> bool:
    """Whether an expression reads a column (or a subquery's result)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list):
            stack.extend(current)
        elif isinstance(current, dict):
            if current.get("class") in ("COLUMN_REF", "SUBQUERY", "PARAMETER", "STAR"):
                return True
            stack.extend(v for v in current.values() if isinstance(v, dict | list))
    return False


def _check_lambda_reads(name: str, args: list[Any]) -> None:
    """A lambda that builds list elements reads only its own parameters (and
    those of lambdas inside it) where its value is built: `[s FOR x IN l]` or
    `list_transform(string_split(s, ''), lambda x: s)` holds a copy of `s` per
    element, len(l) * len(s) bytes in one value, built outside DuckDB's memory
    limit (a 200 KB parameter took a worker down). Predicates and arithmetic
    inside the lambda may read anything: their values have a fixed size."""
    for lam in args:
        if not isinstance(lam, dict) or lam.get("class") != "LAMBDA":
            continue
        params = _lambda_params(lam)
        stack = [lam.get("expr")]
        while stack:
            current = stack.pop()
            if isinstance(current, list):
                stack.extend(current)
                continue
            if not isinstance(current, dict) or _fixed_size(current):
                continue
            cls = current.get("class")
            if cls == "LAMBDA":
                params |= _lambda_params(current)
            elif cls == "COLUMN_REF":
                names = current.get("column_names") or [""]
                if str(names[0]).lower() not in params:
                    _copying_lambda(name, f"column {'.'.join(map(str, names))!r}")
                continue
            elif cls in ("SUBQUERY", "PARAMETER", "STAR"):
                _copying_lambda(name, "a subquery" if cls == "SUBQUERY" else "a parameter")
            stack.extend(v for v in current.values() if isinstance(v, dict | list))


def _lambda_params(lam: dict[str, Any]) -> set[str]:
    lhs = lam.get("lhs")
    refs = arguments(lhs) if isinstance(lhs, dict) and lhs.get("class") == "FUNCTION" else [lhs]
    return {
        str((ref.get("column_names") or [""])[-1]).lower()
        for ref in refs
        if isinstance(ref, dict) and ref.get("class") == "COLUMN_REF"
    }


def _fixed_size(node: dict[str, Any]) -> bool:
    if node.get("class") in _FIXED_SIZE_CLASSES:
        return True
    if node.get("class") == "OPERATOR":
        return node.get("type") in _FIXED_SIZE_OPERATORS
    return node.get("class") == "FUNCTION" and node.get("function_name") in _ARITHMETIC


def _copying_lambda(name: str, what: str) -> None:
    raise QueryRejected(
        f"{name}(): a lambda that builds list elements may read only its own parameters"
        f" where it builds the value, not {what} (each element would hold a copy of it);"
        " unnest() the list and join instead",
        "function_not_allowed",
    )


def check_series_table_function(name: str, node: dict[str, Any]) -> None:
    """`FROM range(...)`: constant arguments; integer ones span at most MAX_SERIES_ROWS."""
    args = arguments(node)
    if not args or not all(_constant(a) for a in args):
        raise QueryRejected(f"{name}() needs constant arguments", "function_not_allowed")
    span = _series_span(args)
    if span is None and not _temporal(args[0]):
        raise QueryRejected(
            f"{name}() takes integer literals, or dates/timestamps and an interval",
            "function_not_allowed",
        )
    if span is not None and span > MAX_SERIES_ROWS:
        raise QueryRejected(
            f"{name}() may produce at most {MAX_SERIES_ROWS} rows", "function_not_allowed"
        )


def arguments(node: dict[str, Any]) -> list[Any]:
    args = node.get("arguments") or node.get("children") or []
    out = []
    for arg in args if isinstance(args, list) else []:
        out.append(arg.get("expression", arg) if isinstance(arg, dict) else arg)
    return out


def _constant(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("class") == "CAST":
        return _constant(node.get("child"))
    if node.get("class") == "FUNCTION":  # e.g. INTERVAL 1 DAY is to_days(1)
        args = arguments(node)
        return bool(args) and all(_constant(a) for a in args)
    return node.get("class") == "CONSTANT"


def _temporal(node: Any) -> bool:
    """A literal date or timestamp (`DATE '2024-01-01'`, a CAST of a string)."""
    if not isinstance(node, dict) or node.get("class") != "CAST":
        return False
    type_expr = node.get("type_expr") or node.get("cast_type") or {}
    type_name = str(type_expr.get("type_name", "") if isinstance(type_expr, dict) else "")
    return type_name.upper() == "DATE" or type_name.upper().startswith("TIMESTAMP")


def _literal_int(node: Any) -> int | None:
    if not isinstance(node, dict):
        return None
    if node.get("class") == "CAST":
        return _literal_int(node.get("child"))
    if node.get("class") == "FUNCTION" and node.get("function_name") == "-":
        args = arguments(node)
        inner = _literal_int(args[0]) if len(args) == 1 else None
        return None if inner is None else -inner
    if node.get("class") != "CONSTANT":
        return None
    literal = node.get("literal") or node.get("value") or {}
    text = literal.get("text") if isinstance(literal, dict) else None
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return None


def _literal_arg(args: list[Any], index: int) -> int | None:
    return _literal_int(args[index]) if len(args) > index else None


def _series_span(args: list[Any]) -> int | None:
    values = [_literal_int(a) for a in args]
    if not values or len(values) > 3 or any(v is None for v in values):
        return None
    ints = [int(v) for v in values if v is not None]
    start, stop, step = (0, ints[0], 1) if len(ints) == 1 else (ints[0], ints[1], 1)
    if len(ints) == 3:
        step = ints[2]
    if step == 0:
        return None
    return max(0, math.ceil((stop - start) / step)) + 1


def _check_format(name: str, args: list[Any]) -> None:
    first = args[0] if args else None
    literal = first.get("literal") if isinstance(first, dict) else None
    text = literal.get("text") if isinstance(literal, dict) else None
    if not isinstance(text, str):
        raise QueryRejected(f"{name}() needs a literal format string", "function_not_allowed")
    if name == "printf":
        computed = _STAR_WIDTH.search(text)
    else:
        computed = _NESTED_FIELD.search(_unescaped(text))
    if computed or _WIDE_FORMAT.search(text):
        raise QueryRejected(
            f"{name}(): widths and precisions must be literals below 10000", "function_not_allowed"
        )


def _unescaped(text: str) -> str:
    return text.replace("{{", "").replace("}}", "")
