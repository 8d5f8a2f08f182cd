"""Named queries from the whitelist: start-up checks and typed parameter binding.

A named query's SQL is written by the operator, checked at start-up with the
same guard as ad-hoc SQL (one SELECT, no file access, no denied functions),
and its `$name` placeholders must be exactly its declared parameters. Callers
send values; they are validated against the declared type and bounds and
bound as parameters, never interpolated into the SQL.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from analytics_shared.whitelist import NamedQuery, QueryParameter, Whitelist, WhitelistError
from api_service.access.rules import claim_value, rules_for
from api_service.errors import ClaimBoundParameter, InvalidClaim, ParameterError, QueryRejected
from api_service.query.sql_guard import SAFE_TABLE_FUNCTIONS, check_query

__all__ = ["RESERVED_QUERY_PARAMETERS", "bind_parameters", "check_whitelist", "parse_query_string"]

# Query-string names GET /queries/{name} keeps for itself.
RESERVED_QUERY_PARAMETERS = frozenset({"format", "cursor", "page_size", "count"})
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")


# ISO text parameters: the parser and what the error says is expected.
_ISO_KINDS: dict[str, tuple[Callable[[str], Any], str]] = {
    "date": (dt.date.fromisoformat, "a date (YYYY-MM-DD)"),
    "timestamp": (dt.datetime.fromisoformat, "an ISO 8601 timestamp"),
}


def _coerce(name: str, spec: QueryParameter, value: Any) -> Any:
    kind = spec.type
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"parameter {name!r} must be an integer")
        if not -(2**63) <= value < 2**63:
            raise ParameterError(f"parameter {name!r} is out of range")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(f"parameter {name!r} must be a number")
        if not math.isfinite(value) or abs(value) > 1e300:
            raise ParameterError(f"parameter {name!r} must be a finite number")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ParameterError(f"parameter {name!r} must be true or false")
    elif kind == "string":
        if not isinstance(value, str):
            raise ParameterError(f"parameter {name!r} must be a string")
        if "\x00" in value:
            raise ParameterError(f"parameter {name!r} contains a NUL character")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise ParameterError(f"parameter {name!r} is longer than {spec.max_length} characters")
    elif kind in _ISO_KINDS:
        parse, expected = _ISO_KINDS[kind]
        try:
            if not isinstance(value, str):
                raise ValueError
            value = parse(value)
        except ValueError:
            raise ParameterError(f"parameter {name!r} must be {expected}") from None
    if kind in ("integer", "number"):
        if spec.minimum is not None and value < spec.minimum:
            raise ParameterError(f"parameter {name!r} must be at least {spec.minimum:g}")
        if spec.maximum is not None and value > spec.maximum:
            raise ParameterError(f"parameter {name!r} must be at most {spec.maximum:g}")
    if spec.enum is not None and value not in spec.enum:
        allowed = ", ".join(repr(v) for v in spec.enum[:20])
        raise ParameterError(f"parameter {name!r} must be one of {allowed}")
    return value


def _from_claim(name: str, spec: QueryParameter, claims: Mapping[str, Any]) -> Any:
    assert spec.from_claim is not None
    # Strict: the claim's JSON type must be the parameter's (a string "7" is not
    # the integer 7), as for row filters (access/claim_types.py).
    value = claim_value(claims, spec.from_claim)  # MissingClaim, InvalidClaim
    try:
        return _coerce(name, spec, value)
    except ParameterError as exc:
        raise InvalidClaim(f"the token's {spec.from_claim!r} claim does not fit: {exc}") from None


def bind_parameters(
    query: NamedQuery, values: dict[str, Any] | None, claims: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Validated values for every declared parameter (defaults filled in).

    A parameter with `from_claim` takes the claim of the caller's token; a value
    the caller sends for it is refused (422 `claim_bound_parameter`), so a caller
    can neither choose it nor mistake what was used."""
    values = values or {}
    unknown = sorted(set(values) - set(query.parameters))
    if unknown:
        raise ParameterError(f"unknown parameter(s): {', '.join(repr(u) for u in unknown[:10])}")
    bound: dict[str, Any] = {}
    for name, spec in query.parameters.items():
        if spec.from_claim is not None:
            if name in values:
                raise ClaimBoundParameter(
                    f"parameter {name!r} is taken from the token's {spec.from_claim!r} claim;"
                    " do not send it"
                )
            bound[name] = _from_claim(name, spec, claims or {})
        elif name in values and values[name] is not None:
            bound[name] = _coerce(name, spec, values[name])
        elif spec.default is not None:
            bound[name] = _coerce(name, spec, spec.default)
        elif spec.required:
            raise ParameterError(f"parameter {name!r} is required")
        else:
            bound[name] = None
    return bound


def _from_text(name: str, spec: QueryParameter, text: str) -> Any:
    """A query-string value as the JSON value a POST body would carry."""
    if spec.type == "integer":
        if not _INTEGER_TEXT.fullmatch(text):
            raise ParameterError(f"parameter {name!r} must be an integer")
        return int(text)
    if spec.type == "number":
        try:
            return float(text)
        except ValueError:
            raise ParameterError(f"parameter {name!r} must be a number") from None
    if spec.type == "boolean":
        if text not in ("true", "false"):
            raise ParameterError(f"parameter {name!r} must be true or false")
        return text == "true"
    return text


def parse_query_string(query: NamedQuery, items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """GET /queries/{name}'s parameters, typed; reserved names are skipped
    (they are the route's own), unknown ones left for bind_parameters to refuse."""
    values: dict[str, Any] = {}
    for key, text in items:
        if key in RESERVED_QUERY_PARAMETERS:
            continue
        if key in values:
            raise ParameterError(f"parameter {key!r} is given more than once")
        spec = query.parameters.get(key)
        values[key] = _from_text(key, spec, text) if spec is not None else text
    return values


def check_whitelist(whitelist: Whitelist) -> Whitelist:
    """Start-up checks the JSON Schema cannot express; WhitelistError names the problem."""
    for name, policy in whitelist.policies.items():
        rules_for(policy)  # row filters parse as one expression each (WhitelistError)
        unsafe = sorted(
            f for f in policy.allowed_table_functions if f.lower() not in SAFE_TABLE_FUNCTIONS
        )
        if unsafe:
            raise WhitelistError(
                f"query whitelist: policy {name!r} allows table functions that can read"
                f" data outside the snapshot: {unsafe} (allowed: {sorted(SAFE_TABLE_FUNCTIONS)})"
            )
    for name, query in whitelist.named_queries.items():
        try:
            guarded = check_query(query.sql, allowed_tables=None, max_length=100_000)
        except QueryRejected as exc:
            raise WhitelistError(f"query whitelist: named query {name!r}: {exc}") from None
        declared = set(query.parameters)
        reserved = sorted(declared & RESERVED_QUERY_PARAMETERS)
        if reserved:
            raise WhitelistError(
                f"query whitelist: named query {name!r} declares {reserved}: these names are"
                f" reserved for the API ({sorted(RESERVED_QUERY_PARAMETERS)}); rename them"
            )
        if guarded.parameters != declared:
            raise WhitelistError(
                f"query whitelist: named query {name!r} uses parameters"
                f" {sorted(guarded.parameters)} but declares {sorted(declared)}"
            )
        for pname, spec in query.parameters.items():
            if spec.default is not None:
                try:
                    _coerce(pname, spec, spec.default)
                except ParameterError as exc:
                    raise WhitelistError(
                        f"query whitelist: named query {name!r}: default of {exc}"
                    ) from None
    return whitelist
