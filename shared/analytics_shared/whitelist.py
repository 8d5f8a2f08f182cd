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


class AppPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tables: list[str]
    named_queries: list[str] = Field(default_factory=list)
    allow_ad_hoc_sql: bool = True
    allowed_table_functions: list[str] = Field(default_factory=list)
    rate_limit: RateLimit | None = None

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
    return whitelist
