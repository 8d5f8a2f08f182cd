"""The size of a query as DuckDB's binder builds it, estimated before it runs.

The guard's structural limits count the parsed text, but the binder copies
parts of it, and binding cannot be interrupted (QUERY_TIMEOUT_SECONDS ends
the request; the pool thread keeps binding, one core busy, for minutes):

- a select alias reused later (`SELECT x AS a, a + a AS b, b + b AS c, ...`)
  is replaced by its expression at every use: 20 such aliases bound for
  minutes;
- a built-in macro whose body names a parameter twice (`nullif(a, b)` is
  `CASE WHEN a = b THEN NULL ELSE a END`) copies that argument: 16 nested
  `nullif` bound for 35 s; `x IN (a, b, c)` copies `x` once per item (14
  nested `(... IN (1, 2, 3))::INT` bound for more than 30 s);
- a CTE marked `NOT MATERIALIZED` is bound again at every reference: a chain
  of 12 such CTEs, each joining the previous one to itself, planned for
  minutes;
- `*` expands to every column of its sources: `SELECT *, * FROM (...)` nested
  16 times, or a chain of CTEs each joining the previous one to itself, is
  tens of thousands of columns; a PIVOT makes a column per aggregate and
  combination of its ON columns' values (four ON columns of ten values and
  three aggregates: 30 000 columns, 10 s to plan).

`bound_size(tree)` counts the expression nodes and expanded columns of the
query with those copies made (a table of unknown width counts as
`TABLE_WIDTH` columns; a CTE without NOT MATERIALIZED is bound once, as
DuckDB materialises a CTE used more than once) and the guard holds it to
`GUARD_MAX_EXPRESSION_NODES`.

One copy happens earlier, in DuckDB's parser: a simple `CASE x WHEN a THEN
... WHEN b ...` becomes `CASE WHEN x = a ... WHEN x = b ...`, one copy of `x`
per WHEN, so nested simple CASEs grow exponentially before the guard sees a
tree (13 of them, 750 characters, took 1.5 GB in `json_serialize_sql` and the
worker with it). `parsed_tokens(sql)` counts the tokens of the query with
those copies made, from DuckDB's tokenizer alone, before anything parses it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import duckdb

from api_service.query.sql_tree import tree_nodes

__all__ = ["TABLE_WIDTH", "bound_size", "macro_copies", "parsed_tokens"]

# Columns assumed for a published table when `*` expands it (the guard does
# not know the snapshot's widths; exponential shapes pass any such bound).
TABLE_WIDTH = 32


def macro_copies(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, ...]]:
    """Built-in scalar macros that name a parameter more than once in their
    body: name -> how many times each argument is copied."""
    rows = con.execute(
        "SELECT function_name, parameters, macro_definition FROM duckdb_functions()"
        " WHERE function_type = 'macro' AND macro_definition IS NOT NULL"
    ).fetchall()
    copies: dict[str, tuple[int, ...]] = {}
    for name, params, body in rows:
        counts = tuple(
            max(1, len(re.findall(rf'(?<![\w"]){re.escape(p)}(?!\w)|"{re.escape(p)}"', body)))
            for p in params
        )
        if any(c > 1 for c in counts):
            previous = copies.get(name.lower(), ())
            longest = max(len(previous), len(counts))
            copies[name.lower()] = tuple(
                max(previous[i] if i < len(previous) else 1, counts[i] if i < len(counts) else 1)
                for i in range(longest)
            )
    return copies


_Scope = dict[str, dict[str, Any]]  # CTE name -> its cte_map entry value


class _Sizer:
    def __init__(self, copies: dict[str, tuple[int, ...]]) -> None:
        self.copies = copies
        self._totals: dict[int, int] = {}
        self._widths: dict[int, int] = {}
        self._inlined: dict[int, int] = {}
        self.inlined_tables = 0  # table references NOT MATERIALIZED copies add

    # -- query nodes ---------------------------------------------------------
    def total(self, node: Any, scope: _Scope) -> int:
        """Expression nodes and expanded columns of a query node, its CTEs,
        FROM clause and subqueries included, as bound."""
        if not isinstance(node, dict):
            return 0
        key = id(node)
        if key not in self._totals:
            self._totals[key] = self._total(node, scope)
        return self._totals[key]

    def _total(self, node: dict[str, Any], scope: _Scope) -> int:
        scope, ctes = self._with_ctes(node, scope)
        kind = node.get("type")
        if kind == "SELECT_NODE":
            sources = self._sources(node.get("from_table"), scope)
            aliases: dict[str, int] = {}
            total = ctes + sum(s[2] for s in sources)
            for item in node.get("select_list") or []:
                if isinstance(item, dict) and item.get("class") == "STAR":
                    total += self._star_width(item, sources) + self.size(item, scope, aliases)
                    continue
                size = self.size(item, scope, aliases)
                total += size
                if isinstance(item, dict) and item.get("alias"):
                    aliases[str(item["alias"]).lower()] = size
            rest = [v for k, v in node.items() if k not in ("select_list", "from_table", "cte_map")]
            return total + self.size(rest, scope, aliases)
        # Set operations, recursive CTEs, CTE nodes: their children are queries.
        return ctes + sum(self.total(child, scope) for child in _query_children(node))

    def _with_ctes(self, node: dict[str, Any], scope: _Scope) -> tuple[_Scope, int]:
        """The scope inside `node` and the size of its materialised CTEs
        (bound once); a NOT MATERIALIZED CTE is counted at each reference."""
        entries = ((node.get("cte_map") or {}).get("map")) or []
        scope = dict(scope)
        total = 0
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("value"), dict):
                continue
            value = entry["value"]
            if value.get("materialized") != "CTE_MATERIALIZE_NEVER":
                total += self.total(value.get("query_node"), scope)
            # A CTE sees the ones before it, not itself (its name there is the table).
            scope[str(entry.get("key", "")).lower()] = {"value": value, "scope": dict(scope)}
        if node.get("type") == "RECURSIVE_CTE_NODE" and node.get("cte_name"):
            scope[str(node["cte_name"]).lower()] = {"value": {}, "scope": dict(scope)}
        return scope, total

    def width(self, node: Any, scope: _Scope) -> int:
        """Output columns of a query node."""
        if not isinstance(node, dict):
            return 1
        key = id(node)
        if key not in self._widths:
            self._widths[key] = self._width(node, scope)
        return self._widths[key]

    def _width(self, node: dict[str, Any], scope: _Scope) -> int:
        scope, _ = self._with_ctes(node, scope)
        kind = node.get("type")
        if kind == "SELECT_NODE":
            sources = self._sources(node.get("from_table"), scope)
            return sum(
                self._star_width(item, sources)
                if isinstance(item, dict) and item.get("class") == "STAR"
                else 1
                for item in node.get("select_list") or []
            )
        if kind == "SET_OPERATION_NODE":
            widths = [self.width(c, scope) for c in _query_children(node)]
            by_name = str(node.get("setop_type", "")).endswith("BY_NAME")
            return sum(widths) if by_name else max(widths, default=1)
        children = _query_children(node)
        return self.width(children[-1], scope) if children else 1

    # -- FROM ----------------------------------------------------------------
    def _sources(self, ref: Any, scope: _Scope) -> list[tuple[str, int, int]]:
        """(alias, width, bound size) of each relation a FROM clause joins."""
        if not isinstance(ref, dict):
            return []
        kind = ref.get("type")
        alias = str(ref.get("alias") or "").lower()
        if kind == "JOIN":
            sources = self._sources(ref.get("left"), scope) + self._sources(ref.get("right"), scope)
            condition = self.size(ref.get("condition"), scope, {})
            return [*sources, ("", 0, condition)]
        if kind == "BASE_TABLE":
            name = str(ref.get("table_name", "")).lower()
            cte = scope.get(name) if not ref.get("schema_name") else None
            if cte is None:
                return [(alias or name, TABLE_WIDTH, 1)]
            body = cte["value"].get("query_node")
            width = self.width(body, cte["scope"]) if body else 1
            inlined = cte["value"].get("materialized") == "CTE_MATERIALIZE_NEVER"
            if not (inlined and body):
                return [(alias or name, width, 1)]
            # Bound again at each reference: its (memoised) size counts again.
            self.inlined_tables += self._tables_in(body, cte["scope"])
            return [(alias or name, width, self.total(body, cte["scope"]))]
        if kind == "SUBQUERY":
            body = (ref.get("subquery") or {}).get("node")
            return [(alias, self.width(body, scope), self.total(body, scope))]
        if kind == "EXPRESSION_LIST":
            rows = ref.get("values") or [[]]
            return [(alias, len(rows[0]) if rows else 1, self.size(rows, scope, {}))]
        if kind == "PIVOT":
            inner = self._sources(ref.get("source"), scope)
            extra = self.size([v for k, v in ref.items() if k != "source"], scope, {})
            # One column per aggregate and combination of the ON columns' values.
            columns = 0
            if ref.get("aggregates"):
                columns = len(ref["aggregates"]) * math.prod(
                    max(1, len(p.get("entries") or [])) for p in ref.get("pivots") or []
                )
            width = sum(s[1] for s in inner) + columns
            return [(alias, width, sum(s[2] for s in inner) + extra + columns)]
        return [(alias, 1, self.size(list(ref.values()), scope, {}))]

    def _tables_in(self, body: dict[str, Any], scope: _Scope) -> int:
        """Table references of a CTE body with the NOT MATERIALIZED CTEs it
        reads copied in (names resolved in the CTE's own scope)."""
        key = id(body)
        if key not in self._inlined:
            count = 0
            for current in tree_nodes(body):
                if current.get("type") != "BASE_TABLE":
                    continue
                count += 1
                cte = (
                    None
                    if current.get("schema_name")
                    else scope.get(str(current.get("table_name", "")).lower())
                )
                if cte is None or cte["value"] is body:
                    continue
                if cte["value"].get("materialized") == "CTE_MATERIALIZE_NEVER":
                    count += self._tables_in(cte["value"].get("query_node") or {}, cte["scope"])
            self._inlined[key] = count
        return self._inlined[key]

    @staticmethod
    def _star_width(star: dict[str, Any], sources: list[tuple[str, int, int]]) -> int:
        relation = str(star.get("relation_name") or "").lower()
        named = [s for s in sources if relation and s[0] == relation]
        return max(1, sum(s[1] for s in (named or sources)))

    # -- expressions ---------------------------------------------------------
    def size(self, expr: Any, scope: _Scope, aliases: dict[str, int]) -> int:
        """Nodes of an expression as bound: a reused alias counts its
        expression, a macro's argument counts once per copy."""
        if isinstance(expr, list):
            return sum(self.size(e, scope, aliases) for e in expr)
        if not isinstance(expr, dict):
            return 0
        cls = expr.get("class")
        if cls == "SUBQUERY":
            body = (expr.get("subquery") or {}).get("node")
            rest = [v for k, v in expr.items() if k != "subquery"]
            return 1 + self.total(body, scope) + self.size(rest, scope, aliases)
        if str(expr.get("type", "")).endswith("_NODE"):
            return self.total(expr, scope)
        if cls == "COLUMN_REF":
            names = expr.get("column_names") or []
            if len(names) == 1 and str(names[0]).lower() in aliases:
                return aliases[str(names[0]).lower()]
            return 1
        own = 1 if isinstance(cls, str) else 0
        if cls == "OPERATOR" and expr.get("type") in ("COMPARE_IN", "COMPARE_NOT_IN"):
            # `x IN (a, b, c)` binds as x = a OR x = b OR x = c: x once per item
            # (a column or constant is a reference, not a copy worth counting).
            left, *items = expr.get("children") or [None]
            operand = self.size(left, scope, aliases)
            times = max(1, len(items)) if operand > 1 else 1
            return own + times * operand + self.size(items, scope, aliases)
        if cls == "FUNCTION":
            copies = self.copies.get(str(expr.get("function_name", "")).lower())
            if copies:
                args = expr.get("children") or expr.get("arguments") or []
                rest = [v for k, v in expr.items() if k not in ("children", "arguments")]
                return (
                    own
                    + sum(
                        (copies[i] if i < len(copies) else 1) * self.size(a, scope, aliases)
                        for i, a in enumerate(args)
                    )
                    + self.size(rest, scope, aliases)
                )
        return own + sum(
            self.size(v, scope, aliases) for v in expr.values() if isinstance(v, dict | list)
        )


def _query_children(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = []
    for key in ("left", "right", "query", "child"):
        value = node.get(key)
        if isinstance(value, dict):
            children.append(value)
    for value in node.get("children") or []:
        if isinstance(value, dict):
            children.append(value)
    return children


def bound_size(tree: dict[str, Any], copies: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """The statement's size as bound (see the module docstring), and the table
    references its NOT MATERIALIZED CTEs add where they are copied in."""
    sizer = _Sizer(copies)
    statements = tree.get("statements") or []
    size = sum(sizer.total(s.get("node"), {}) for s in statements if isinstance(s, dict))
    return size, sizer.inlined_tables


class _Case:
    """A CASE being read: its tokens, and for a simple CASE its operand's."""

    def __init__(self) -> None:
        self.simple: bool | None = None  # unknown until the token after CASE
        self.in_operand = False
        self.operand = 0
        self.whens = 0
        self.size = 1

    def add(self, n: int) -> None:
        if self.in_operand:
            self.operand += n
        else:
            self.size += n

    def expanded(self) -> int:
        return self.size + self.operand * max(1, self.whens)


def parsed_tokens(sql: str) -> int:
    """Tokens of `sql` once the parser has copied each simple CASE's operand
    into each of its WHENs (nested ones multiply)."""
    root = _Case()
    stack = [root]
    for position, end, kind in _tokens(sql):
        word = sql[position:end].strip().upper() if kind == duckdb.token_type.keyword else ""
        top = stack[-1]
        if top is not root and top.simple is None:
            top.simple = word != "WHEN"
            top.in_operand = top.simple
        if word == "CASE":
            stack.append(_Case())
        elif word == "WHEN" and top is not root:
            top.whens += 1
            top.in_operand = False
            top.size += 1
        elif word == "END" and top is not root:
            stack.pop()
            stack[-1].add(top.expanded())
        else:
            top.add(1)
    while len(stack) > 1:  # unbalanced: the parser will refuse it
        top = stack.pop()
        stack[-1].add(top.expanded())
    return root.expanded()


def _tokens(sql: str) -> list[tuple[int, int, Any]]:
    """(start, end, kind) of each token but comments. A token ends where the next
    one, comment or not, starts: `CASE/**/x` is the keyword CASE, not `CASE/**/`."""
    tokens = duckdb.tokenize(sql)
    ends = [p for p, _ in tokens[1:]] + [len(sql)]
    return [
        (p, e, k) for (p, k), e in zip(tokens, ends, strict=True) if k != duckdb.token_type.comment
    ]
