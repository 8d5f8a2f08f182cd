"""The type each row-filter claim must have, learned from DuckDB, and the
strict check of a token's claim values against it.

DuckDB binds a parameter with the type of the value it is given and casts
across kinds where the context asks for another: a claim `true` bound to
`customer_id = claim('c')` (an INTEGER column) matches customer 1, an integer
claim compared with a VARCHAR column casts the column and matches '01'. So a
claim is never handed to DuckDB on trust: per snapshot version and table rule
the filter is planned with its claims unbound (`json_serialize_plan` infers an
unbound parameter's type from its context, e.g. the column it is compared
with), and at request time each claim value must be of exactly that kind:

- integer types: a JSON integer (not a boolean) within the type's range;
- DECIMAL/FLOAT/DOUBLE: a JSON number (not a boolean);
- VARCHAR: a string; BOOLEAN: true or false; UUID: a UUID string;
- DATE/TIME/TIMESTAMP*: an ISO 8601 string (bound as the parsed value);
- LIST/ARRAY: a list whose every element fits the element type;
- anything else, or a claim whose type DuckDB cannot infer from the filter
  (e.g. `id IN (SELECT unnest(claim('ids')))`; write `list_contains(claim('ids'),
  id)` or `CAST(claim('ids') AS INTEGER[])`): refused.

A claim used in several places must fit every type it is used with. What
must always hold: a claim that does not fit is a 403 `invalid_claim` before
anything runs; no value reaches DuckDB that it would have to cast.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from analytics_shared.logging_config import get_logger
from analytics_shared.snapshot_file import quote_ident
from api_service.access.rules import (
    RESERVED_PREFIX,
    TableRule,
    claim_param,
    claim_value,
    tree_nodes,
)
from api_service.errors import InvalidClaim
from api_service.query.sql_guard import parser_connection

__all__ = ["ClaimType", "cached_claim_types", "checked_claims", "learn_claim_types"]

log = get_logger(__name__)


@dataclass(frozen=True)
class ClaimType:
    id: str  # DuckDB's logical type id (INTEGER, LIST, ...); "" when it could not be learned
    child: ClaimType | None = None  # LIST/ARRAY element

    def __str__(self) -> str:
        if not self.id:
            return "a type the filter does not determine"
        return f"{self.child}[]" if self.child is not None else self.id


_UNTYPED = ClaimType("")
Typing = Mapping[str, tuple[ClaimType, ...]]  # claim name -> the types it must fit

_INT_RANGES = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "HUGEINT": (-(2**63), 2**63 - 1),  # claims wider than 64 bits are not bound
    "UTINYINT": (0, 2**8 - 1),
    "USMALLINT": (0, 2**16 - 1),
    "UINTEGER": (0, 2**32 - 1),
    "UBIGINT": (0, 2**64 - 1),
    "UHUGEINT": (0, 2**64 - 1),
}
_NUMBERS = frozenset({"FLOAT", "DOUBLE", "DECIMAL"})
_ISO: dict[str, Callable[[str], Any]] = {
    "DATE": dt.date.fromisoformat,
    "TIME": dt.time.fromisoformat,
    "TIMESTAMP": dt.datetime.fromisoformat,
    "TIMESTAMP_S": dt.datetime.fromisoformat,
    "TIMESTAMP_MS": dt.datetime.fromisoformat,
    "TIMESTAMP_NS": dt.datetime.fromisoformat,
    "TIMESTAMP WITH TIME ZONE": dt.datetime.fromisoformat,
}


class _Mismatch(Exception):
    pass


def _fit(value: Any, kind: ClaimType) -> Any:
    """`value` as bound for `kind`, or _Mismatch."""
    if kind.id in _INT_RANGES:
        low, high = _INT_RANGES[kind.id]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Mismatch
        return value
    if kind.id in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Mismatch
        if isinstance(value, float) and not math.isfinite(value):
            raise _Mismatch
        return value
    if kind.id == "VARCHAR":
        if not isinstance(value, str):
            raise _Mismatch
        return value
    if kind.id == "BOOLEAN":
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if kind.id == "UUID" or kind.id in _ISO:
        if not isinstance(value, str):
            raise _Mismatch
        parse = uuid.UUID if kind.id == "UUID" else _ISO[kind.id]
        try:
            return parse(value)
        except ValueError:
            raise _Mismatch from None
    if kind.id in ("LIST", "ARRAY") and kind.child is not None:
        if not isinstance(value, list):
            raise _Mismatch
        return [_fit(item, kind.child) for item in value]
    raise _Mismatch


def checked_claims(
    claims: Mapping[str, Any], names: Iterable[str], typing: Typing
) -> dict[str, Any]:
    """The values to bind for `names`: each claim present (MissingClaim) and of
    exactly the type the filters need (InvalidClaim)."""
    values: dict[str, Any] = {}
    for name in names:
        value = claim_value(claims, name)
        kinds = typing.get(name) or (_UNTYPED,)
        for kind in kinds:
            if not kind.id:
                raise InvalidClaim(
                    f"the policy's row filter uses the {name!r} claim where its type cannot be"
                    " determined, so it is not used (the operator can add a CAST)"
                )
            try:
                fitted = _fit(value, kind)
            except _Mismatch:
                raise InvalidClaim(
                    f"the token's {name!r} claim must be {_describe(kind)} for this"
                    " application's row filter"
                ) from None
        # Several types: the JSON value fits each; a temporal one binds parsed.
        values[name] = fitted if len(kinds) == 1 else value
    return values


def _describe(kind: ClaimType) -> str:
    if kind.id in _INT_RANGES:
        return f"an integer ({kind.id})"
    if kind.id in _NUMBERS:
        return f"a number ({kind.id})"
    if kind.id == "VARCHAR":
        return "a string"
    if kind.id == "BOOLEAN":
        return "true or false"
    if kind.id == "UUID":
        return "a UUID string"
    if kind.id in _ISO:
        return f"an ISO 8601 {kind.id.lower()} string"
    if kind.child is not None:
        return f"a list of {_describe(kind.child).removeprefix('a ').removeprefix('an ')} values"
    return f"of a type no claim can carry ({kind})"


# -- learning the types ---------------------------------------------------------
CLAIM_TYPE_CACHE_ENTRIES = 512
_cache: OrderedDict[tuple[str, TableRule], Typing] = OrderedDict()
_lock = threading.Lock()


def cached_claim_types(version: str, rules: Iterable[TableRule]) -> Typing | None:
    """The merged typing of `rules` on `version`, or None when one is not learned yet."""
    parts = []
    with _lock:
        for rule in rules:
            part = _cache.get((version, rule))
            if part is None:
                return None
            parts.append(part)
    return _merge(parts)


def learn_claim_types(
    con: duckdb.DuckDBPyConnection, version: str, rules: Iterable[TableRule]
) -> Typing:
    """Plan each rule's filter on the snapshot (`con`) and cache its claims' types.
    Blocking: call it on a pool thread."""
    parts = []
    for rule in rules:
        key = (version, rule)
        with _lock:
            part = _cache.get(key)
        if part is None:
            part = _learn(con, rule)
            with _lock:
                _cache[key] = part
                while len(_cache) > CLAIM_TYPE_CACHE_ENTRIES:
                    _cache.popitem(last=False)
        parts.append(part)
    return _merge(parts)


def _merge(parts: Iterable[Typing]) -> Typing:
    merged: dict[str, tuple[ClaimType, ...]] = {}
    for part in parts:
        for name, kinds in part.items():
            merged[name] = tuple(dict.fromkeys((*merged.get(name, ()), *kinds)))
    return merged


def _learn(con: duckdb.DuckDBPyConnection, rule: TableRule) -> Typing:
    if rule.filter_json is None or not rule.claims:
        return {}
    by_param = {claim_param(c): c for c in rule.claims}
    cursor = con.cursor()
    try:
        row = cursor.execute("SELECT json_serialize_plan(?::VARCHAR)", [_probe(rule)]).fetchone()
    except duckdb.Error as exc:
        row = (json.dumps({"error": True, "error_message": str(exc)}),)
    finally:
        cursor.close()
    plan: dict[str, Any] = json.loads(row[0]) if row else {"error": True}
    if plan.get("error"):
        # Fail closed: every claim of this filter is refused until it is typed.
        log.warning(
            "row_filter_claims_untyped",
            table=rule.table,
            claims=list(rule.claims),
            error=str(plan.get("error_message", ""))[:300],
        )
        return {c: (_UNTYPED,) for c in rule.claims}
    found: dict[str, tuple[ClaimType, ...]] = {}
    for node in tree_nodes(plan):
        claim = by_param.get(str(node.get("identifier", "")))
        if node.get("expression_class") == "BOUND_PARAMETER" and claim is not None:
            kind = _claim_type(node.get("return_type"))
            found[claim] = tuple(dict.fromkeys((*found.get(claim, ()), kind)))
    # A claim the plan no longer shows (folded away) still must not be coerced.
    return {c: found.get(c, (_UNTYPED,)) for c in rule.claims}


def _claim_type(node: Any) -> ClaimType:
    if not isinstance(node, dict) or not node.get("id"):
        return _UNTYPED
    kind = str(node["id"])
    if kind == "TIMESTAMP_TZ":
        kind = "TIMESTAMP WITH TIME ZONE"
    if kind in ("LIST", "ARRAY"):
        info = node.get("type_info") or {}
        child = _claim_type(info.get("child_type"))
        return ClaimType(kind, child) if child.id else _UNTYPED
    return ClaimType(kind) if kind not in ("UNKNOWN", "ANY", "SQLNULL") else _UNTYPED


def _probe(rule: TableRule) -> str:
    """`SELECT 1 FROM main.t AS __rls_t WHERE <filter>`, built from the parsed filter."""
    assert rule.filter_json is not None
    con = parser_connection()
    alias = quote_ident(RESERVED_PREFIX + rule.table)
    text = f"SELECT 1 FROM main.{quote_ident(rule.table)} AS {alias} WHERE true"
    row = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [text]).fetchone()
    tree = json.loads(row[0]) if row else {}
    tree["statements"][0]["node"]["where_clause"] = json.loads(rule.filter_json)
    back = con.execute("SELECT json_deserialize_sql(?::VARCHAR)", [json.dumps(tree)]).fetchone()
    return str(back[0]) if back else ""
