"""The query whitelist: which apps may read which tables and named queries.

The file (`schemas/query_whitelist.json` by default, `QUERY_WHITELIST_PATH`
otherwise) is validated against `schemas/query_whitelist.schema.json` first,
so a typo stops start-up with the JSON path of the problem.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analytics_shared.errors import ConfigurationError

__all__ = [
    "DEFAULT_WHITELIST_PATH",
    "ApiKeyEntry",
    "AppPolicy",
    "ColumnPolicy",
    "NamedQuery",
    "QueryParameter",
    "Whitelist",
    "WhitelistError",
    "load_whitelist",
]

SCHEMA_DIR = Path(__file__).parent / "schemas"
DEFAULT_WHITELIST_PATH = SCHEMA_DIR / "query_whitelist.json"
SCHEMA_PATH = SCHEMA_DIR / "query_whitelist.schema.json"


class WhitelistError(ConfigurationError, ValueError):
    pass


class QueryParameter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["integer", "number", "string", "boolean", "date", "timestamp"]
    required: bool = True
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    enum: list[Any] | None = None
    description: str = ""
    # Filled from this top-level claim of the caller's token, never from the
    # caller's parameters (a caller-sent value is refused).
    from_claim: str | None = Field(None, min_length=1)


class NamedQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sql: str
    description: str = ""
    parameters: dict[str, QueryParameter] = Field(default_factory=dict)


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    requests: int = Field(gt=0)
    window_seconds: int = Field(gt=0)


class ApiKeyEntry(BaseModel):
    """One API key: only its SHA-256 hash is stored, bound to a policy and scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str
    policy: str
    scopes: list[str]
    expires_at: datetime | None = None
    description: str = ""


class ColumnPolicy(BaseModel):
    """Which columns of one table a policy may see, and which of those masked.

    `allowed_columns` absent means every column; a masked column must be one
    the policy may see. A mask is `null` (always NULL, same type) or `hash`
    (a keyed SHA-256 hex digest: equal values stay joinable, raw values never show).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    allowed_columns: list[str] | None = None
    masked_columns: dict[str, Literal["null", "hash"]] = Field(default_factory=dict)


class AppPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tables: list[str]
    named_queries: list[str] = Field(default_factory=list)
    allow_ad_hoc_sql: bool = True
    allowed_table_functions: list[str] = Field(default_factory=list)
    rate_limit: RateLimit | None = None
    # Row-level security: table -> a boolean SQL expression over its columns
    # and `claim('<token claim>')` values (api_service/access/ applies it).
    row_filters: dict[str, str] = Field(default_factory=dict)
    column_policies: dict[str, ColumnPolicy] = Field(default_factory=dict)

    def may_read(self, table: str) -> bool:
        return "*" in self.tables or table.lower() in {t.lower() for t in self.tables}

    def may_run(self, query_name: str) -> bool:
        return "*" in self.named_queries or query_name in self.named_queries


class Whitelist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    default_policy: str = "default"
    unknown_apps: Literal["default", "refuse"] = "default"
    policies: dict[str, AppPolicy]
    apps: dict[str, str] = Field(default_factory=dict)
    named_queries: dict[str, NamedQuery] = Field(default_factory=dict)
    api_keys: dict[str, ApiKeyEntry] = Field(default_factory=dict)

    def policy_for(self, app: str | None) -> AppPolicy | None:
        """The app's policy; the default one for unknown apps unless refused."""
        if app is not None and app in self.apps:
            return self.policies[self.apps[app]]
        if self.unknown_apps == "refuse":
            return None
        return self.policies[self.default_policy]


def load_whitelist(path: Path | None = None) -> Whitelist:
    path = Path(path or DEFAULT_WHITELIST_PATH)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise WhitelistError(f"query whitelist not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise WhitelistError(f"query whitelist {path} is not JSON: {exc}") from None
    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(document), key=lambda e: list(e.path)
    )
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "<root>"
        raise WhitelistError(f"query whitelist {path} is invalid at {where}: {first.message}")
    try:
        whitelist = Whitelist.model_validate(document)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "/".join(str(p) for p in err["loc"]) or "<root>"
        raise WhitelistError(
            f"query whitelist {path} is invalid at {where}: {err['msg']}"
        ) from None
    named = [
        whitelist.default_policy,
        *whitelist.apps.values(),
        *(k.policy for k in whitelist.api_keys.values()),
    ]
    missing = set(named) - set(whitelist.policies)
    if missing:
        raise WhitelistError(f"query whitelist {path} names unknown policies: {sorted(missing)}")
    for name, policy in whitelist.policies.items():
        unknown = [q for q in policy.named_queries if q != "*" and q not in whitelist.named_queries]
        if unknown:
            raise WhitelistError(
                f"query whitelist {path}: policy {name!r} allows unknown named queries {unknown}"
            )
        _check_table_rules(path, name, policy)
    return whitelist


def _check_table_rules(path: Path, name: str, policy: AppPolicy) -> None:
    """Row filters and column policies name tables the policy reads, and a
    masked column is one it may see."""
    for table in [*policy.row_filters, *policy.column_policies]:
        if not policy.may_read(table):
            raise WhitelistError(
                f"query whitelist {path}: policy {name!r} restricts table {table!r}"
                " which it does not list in its tables"
            )
    for table, columns in policy.column_policies.items():
        if columns.allowed_columns is None:
            continue
        allowed = {c.lower() for c in columns.allowed_columns}
        hidden = sorted(c for c in columns.masked_columns if c.lower() not in allowed)
        if hidden:
            raise WhitelistError(
                f"query whitelist {path}: policy {name!r} masks columns of {table!r}"
                f" that are not in its allowed_columns: {hidden}"
            )
