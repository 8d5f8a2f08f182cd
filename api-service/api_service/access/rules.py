"""A policy's row filters and column policies, compiled once, and the claim
values a request binds to them.

`rules_for(policy)` turns the whitelist's `row_filters` and `column_policies`
into `AccessRules` (hashable: the rewrite cache keys on them). A filter is
operator SQL, parsed by DuckDB as the WHERE clause of `SELECT 1 FROM t WHERE
<filter>`: anything else in the text (a second clause, a UNION, a statement
separator) is a `WhitelistError` at start-up. Each `claim('<name>')` call in it
becomes a named parameter (`CLAIM_PREFIX` + a digest of the name) whose value
is taken from the caller's token at request time (`claim_values`); the
rewritten SQL is therefore the same for every caller of the policy, and one
caller's values never reach another's query.

What must always hold: a claim a request needs and its token lacks is a 403
`missing_claim`; a claim that is an object (or a list of non-scalars) is a 403
`invalid_claim`; nothing runs in either case.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from analytics_shared.manifest import ColumnSchema
from analytics_shared.whitelist import AppPolicy, Whitelist, WhitelistError
from api_service.errors import InvalidClaim, MissingClaim, QueryRejected
from api_service.query.sql_guard import check_query, parser_connection
from api_service.query.sql_tree import tree_nodes

__all__ = [
    "MASK_INNER_PARAM",
    "MASK_OUTER_PARAM",
    "RESERVED_PREFIX",
    "AccessRules",
    "TableRule",
    "check_mask_secret",
    "claim_param",
    "claim_value",
    "mask_keys",
    "rules_for",
    "tree_nodes",
]

# Names the rewrite uses (parameters, aliases); a caller's SQL may not use them.
RESERVED_PREFIX = "__rls_"
CLAIM_PREFIX = RESERVED_PREFIX + "claim_"
MASK_INNER_PARAM = RESERVED_PREFIX + "mask_inner"
MASK_OUTER_PARAM = RESERVED_PREFIX + "mask_outer"


@dataclass(frozen=True)
class TableRule:
    table: str  # lower case
    # The filter's expression tree (json_serialize_sql form) with claim() calls
    # as parameters, serialised to text so the rule stays hashable.
    filter_json: str | None
    claims: tuple[str, ...]  # claim names the filter reads
    allowed: frozenset[str] | None  # lower-case column names; None: all
    masked: tuple[tuple[str, str], ...]  # (lower-case column, "null" | "hash")

    @property
    def column_restricted(self) -> bool:
        return self.allowed is not None or bool(self.masked)

    def describe(self, columns: list[ColumnSchema]) -> list[dict[str, str]]:
        """The columns as GET /schema shows them: hidden ones left out, masked
        ones marked (a hashed column is text)."""
        masked = dict(self.masked)
        shown = []
        for column in columns:
            if self.allowed is not None and column.name.lower() not in self.allowed:
                continue
            mode = masked.get(column.name.lower())
            if mode is None:
                shown.append(column.model_dump())
            else:
                kind = "VARCHAR" if mode == "hash" else column.type
                shown.append({"name": column.name, "type": kind, "masked": mode})
        return shown

    def hidden(self, columns: tuple[str, ...]) -> frozenset[str]:
        if self.allowed is None:
            return frozenset()
        return frozenset(c.lower() for c in columns if c.lower() not in self.allowed)


@dataclass(frozen=True)
class AccessRules:
    rules: tuple[TableRule, ...]
    by_table: Mapping[str, TableRule] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_table", {r.table: r for r in self.rules})

    @property
    def uses_hash_masks(self) -> bool:
        return any(mode == "hash" for r in self.rules for _, mode in r.masked)


def claim_param(claim: str) -> str:
    return CLAIM_PREFIX + hashlib.sha256(claim.encode()).hexdigest()[:16]


_compiled: dict[int, tuple[AppPolicy, AccessRules | None]] = {}


def rules_for(policy: AppPolicy) -> AccessRules | None:
    """The policy's compiled rules (None when it restricts no table); cached."""
    hit = _compiled.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    rules = _compile(policy)
    if len(_compiled) > 256:
        _compiled.clear()
    _compiled[id(policy)] = (policy, rules)
    return rules


def _compile(policy: AppPolicy) -> AccessRules | None:
    tables = {t.lower() for t in [*policy.row_filters, *policy.column_policies]}
    if not tables:
        return None
    filters = {t.lower(): f for t, f in policy.row_filters.items()}
    columns = {t.lower(): c for t, c in policy.column_policies.items()}
    rules = []
    for table in sorted(tables):
        filter_json, claims = (None, ()) if table not in filters else _filter(table, filters[table])
        spec = columns.get(table)
        allowed = None
        masked: tuple[tuple[str, str], ...] = ()
        if spec is not None:
            if spec.allowed_columns is not None:
                allowed = frozenset(c.lower() for c in spec.allowed_columns)
            masked = tuple(sorted((c.lower(), m) for c, m in spec.masked_columns.items()))
        rules.append(TableRule(table, filter_json, claims, allowed, masked))
    return AccessRules(tuple(rules))


def _filter(table: str, text: str) -> tuple[str, tuple[str, ...]]:
    """The filter's WHERE tree with claim('x') as parameters, and the claims it reads."""
    con = parser_connection()
    probe = f"SELECT 1 FROM {RESERVED_PREFIX}t WHERE {text}"
    [(text,)] = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [probe]).fetchall()
    tree: dict[str, Any] = json.loads(text)
    statements: list[dict[str, Any]] = tree.get("statements", [])
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    shape_ok = (
        not tree.get("error")
        and node.get("type") == "SELECT_NODE"
        and not node.get("modifiers")
        and not node.get("cte_map", {}).get("map")
        and node.get("from_table", {}).get("table_name") == f"{RESERVED_PREFIX}t"
        and not node.get("group_expressions")
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("where_clause") is not None
    )
    if not shape_ok:
        raise WhitelistError(
            f"query whitelist: the row filter of {table!r} is not one boolean expression: {text!r}"
        )
    claims: list[str] = []
    where = _claims_as_parameters(node["where_clause"], claims, table)
    _qualify_tables(where, table)
    _qualify_columns(where, table)
    node["where_clause"] = where
    # The operator's filter passes the same guard as any query (denied functions ...).
    [(rendered,)] = con.execute(
        "SELECT json_deserialize_sql(?::VARCHAR)", [json.dumps(tree)]
    ).fetchall()
    try:
        check_query(str(rendered), allowed_tables=None, max_length=100_000)
    except QueryRejected as exc:
        raise WhitelistError(f"query whitelist: the row filter of {table!r}: {exc}") from None
    return json.dumps(where), tuple(dict.fromkeys(claims))


def _qualify_tables(node: Any, table: str) -> None:
    """Tables the filter reads become `main.<t>`: inserted into a caller's query,
    an unqualified name would bind to a caller's CTE of that name instead."""
    for current in tree_nodes(node):
        if (current.get("cte_map") or {}).get("map") or current.get("type") == "RECURSIVE_CTE_NODE":
            raise WhitelistError(
                f"query whitelist: the row filter of {table!r} defines a CTE; write it without"
            )
        if current.get("type") == "BASE_TABLE":
            if current.get("catalog_name") or current.get("schema_name") not in ("", "main", None):
                raise WhitelistError(
                    f"query whitelist: the row filter of {table!r} reads a table outside the"
                    " published data"
                )
            current["schema_name"] = "main"
            # DuckDB prints the reference from its qualified path, so set both.
            current["qualified_name"] = {"path": ["main", current.get("table_name", "")]}


def _qualify_columns(node: Any, table: str) -> None:
    """The filter's own column names become `__rls_<t>.<col>`: a name the table
    lacks must fail, not bind to a column of the caller's query around it.
    `<t>.<col>` is the same column. Any other qualifier is refused: `o.col`
    bound to the caller's table `o`, so the caller chose the filter's outcome.
    Subqueries and lambdas inside the filter keep their own scopes."""
    alias = RESERVED_PREFIX + table
    for current in tree_nodes(node, lambda n: n.get("class") in ("SUBQUERY", "LAMBDA")):
        names = current.get("column_names")
        if current.get("class") != "COLUMN_REF" or not isinstance(names, list) or not names:
            continue
        if len(names) == 1:
            current["column_names"] = [alias, names[0]]
        elif str(names[0]).lower() == table.lower():
            current["column_names"] = [alias, *names[1:]]
        else:
            raise WhitelistError(
                f"query whitelist: the row filter of {table!r} names {'.'.join(names)!r}:"
                f" write the table's columns bare or as {table}.<column> (another qualifier"
                " would bind to the caller's query); read other tables in a subquery"
            )


def _claims_as_parameters(node: Any, claims: list[str], table: str) -> Any:
    if isinstance(node, list):
        return [_claims_as_parameters(item, claims, table) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("class") == "FUNCTION" and str(node.get("function_name")).lower() == "claim":
        args = node.get("arguments") or []
        literal = args[0].get("expression", {}).get("literal", {}) if len(args) == 1 else {}
        if literal.get("kind") != "STRING" or not literal.get("text"):
            raise WhitelistError(
                f"query whitelist: the row filter of {table!r} calls claim() without"
                " one string literal (the claim's name)"
            )
        claims.append(literal["text"])
        return {
            "class": "PARAMETER",
            "type": "VALUE_PARAMETER",
            "alias": "",
            "query_location": node.get("query_location", 0),
            "query_location_length": node.get("query_location_length", 0),
            "identifier": claim_param(literal["text"]),
        }
    return {k: _claims_as_parameters(v, claims, table) for k, v in node.items()}


_SCALARS = (str, int, float, bool)


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """The value of a top-level claim, as a bound parameter may carry it."""
    if name not in claims or claims[name] is None:
        raise MissingClaim(
            f"the token has no {name!r} claim, which this application's policy needs"
        )
    value = claims[name]
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
        return value
    raise InvalidClaim(f"the token's {name!r} claim must be a string, number, boolean or list")


def check_mask_secret(whitelist: Whitelist, secret: SecretStr | None) -> None:
    """Start-up: a policy with `"hash"` masks needs COLUMN_MASK_SECRET (16+ characters)."""
    users = sorted(
        name for name, p in whitelist.policies.items() if (r := rules_for(p)) and r.uses_hash_masks
    )
    value = secret.get_secret_value() if secret is not None else ""
    if users and len(value) < 16:
        raise WhitelistError(
            f"query whitelist: policies {users} mask columns with a keyed hash:"
            " set COLUMN_MASK_SECRET to a random string of at least 16 characters"
        )


@functools.lru_cache(maxsize=8)
def mask_keys(secret: str) -> dict[str, str]:
    """The two keys of the masking hash, derived from the server's secret:
    sha256(outer || sha256(inner || value)), an HMAC-like keyed hash."""
    key = secret.encode()
    return {
        MASK_INNER_PARAM: hmac.new(key, b"column-mask inner", hashlib.sha256).hexdigest(),
        MASK_OUTER_PARAM: hmac.new(key, b"column-mask outer", hashlib.sha256).hexdigest(),
    }
