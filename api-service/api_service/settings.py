"""The API's one settings class (environment variables, seed-compatible names)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from analytics_shared.settings import CommonSettings
from api_service.query.sql_limits import GuardLimits

__all__ = ["ApiSettings"]


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _web_concurrency() -> int:
    try:
        return max(1, int(os.environ.get("WEB_CONCURRENCY", "") or 0) or _cpu_count())
    except ValueError:
        return _cpu_count()


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _default_duckdb_threads() -> int:
    return max(1, _cpu_count() // _web_concurrency())


def _default_query_workers() -> int:
    return max(4, 2 * _default_duckdb_threads())


class ApiSettings(CommonSettings):
    auth0_domain: str | None = Field(None, validation_alias="AUTH0_DOMAIN")
    auth0_api_audience: str | None = Field(None, validation_alias="AUTH0_API_AUDIENCE")
    auth0_algorithms: Annotated[list[str], NoDecode] = Field(
        ["RS256"], validation_alias="AUTH0_ALGORITHMS"
    )
    auth0_jwks_url: str | None = Field(None, validation_alias="AUTH0_JWKS_URL")
    auth0_issuer: str | None = Field(None, validation_alias="AUTH0_ISSUER")
    jwt_leeway_seconds: int = Field(30, validation_alias="JWT_LEEWAY_SECONDS", ge=0, le=300)
    jwks_cache_seconds: int = Field(600, validation_alias="JWKS_CACHE_SECONDS", ge=1)
    # An unknown kid refetches the JWKS at most once per cooldown; an unreachable
    # identity provider is bridged with the last keys for up to JWKS_MAX_STALE_SECONDS.
    jwks_refetch_cooldown_seconds: float = Field(
        60.0, validation_alias="JWKS_REFETCH_COOLDOWN_SECONDS", ge=0
    )
    jwks_max_stale_seconds: int = Field(86_400, validation_alias="JWKS_MAX_STALE_SECONDS", ge=0)
    api_keys_enabled: bool = Field(False, validation_alias="API_KEYS_ENABLED")

    rate_limit_requests: int = Field(50, validation_alias="RATE_LIMIT_REQUESTS", ge=1)
    rate_limit_window: int = Field(60, validation_alias="RATE_LIMIT_WINDOW", ge=1)
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    rate_limit_key_prefix: str = Field(
        "analytics-api:ratelimit", validation_alias="RATE_LIMIT_KEY_PREFIX", min_length=1
    )
    max_request_bytes: int = Field(262_144, validation_alias="MAX_REQUEST_BYTES", ge=1024)
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CORS_ORIGINS"
    )
    query_whitelist_path: Path | None = Field(None, validation_alias="QUERY_WHITELIST_PATH")

    snapshot_poll_seconds: float = Field(10.0, validation_alias="SNAPSHOT_POLL_SECONDS", gt=0)
    query_timeout_seconds: float = Field(10.0, validation_alias="QUERY_TIMEOUT_SECONDS", gt=0)
    max_result_rows: int = Field(10_000, validation_alias="MAX_RESULT_ROWS", ge=1)
    # Arrow bytes of a buffered result (json/arrow/parquet), and of each batch of
    # a streamed one: a query past it is refused before it is encoded.
    max_result_bytes: int = Field(32_000_000, validation_alias="MAX_RESULT_BYTES", ge=1024)
    max_sql_length: int = Field(20_000, validation_alias="MAX_SQL_LENGTH", ge=100)
    # The SQL guard's structural limits (query/sql_limits.py): planning cost
    # grows steeply with joined tables, and DuckDB's interrupt lands only after it.
    guard_max_table_references: int = Field(32, validation_alias="GUARD_MAX_TABLE_REFERENCES", ge=1)
    guard_max_joins: int = Field(24, validation_alias="GUARD_MAX_JOINS", ge=0)
    guard_max_set_operations: int = Field(32, validation_alias="GUARD_MAX_SET_OPERATIONS", ge=0)
    guard_max_expression_nodes: int = Field(
        5_000, validation_alias="GUARD_MAX_EXPRESSION_NODES", ge=10
    )
    guard_max_expression_depth: int = Field(
        100, validation_alias="GUARD_MAX_EXPRESSION_DEPTH", ge=5
    )
    # DUCKDB_MEMORY_LIMIT, RESULT_CACHE_BYTES and MAX_RESULT_BYTES are derived from the
    # container's memory at start-up unless set (ops/memory_budget.py); these
    # defaults are what an unset value means before that.
    duckdb_memory_limit: str = Field("1GB", validation_alias="DUCKDB_MEMORY_LIMIT")
    # DuckDB spills sorts and joins past its memory limit to DATA_DIR, up to this.
    duckdb_max_temp_directory_size: str = Field(
        "2GB", validation_alias="DUCKDB_MAX_TEMP_DIRECTORY_SIZE"
    )
    # How long a large result or export waits for the worker's memory budget,
    # and a query for DuckDB's memory other queries hold, before it is answered
    # 503 busy (query/admission.py, query/executor.py).
    admission_wait_seconds: float = Field(5.0, validation_alias="ADMISSION_WAIT_SECONDS", ge=0)
    # Serving: DuckDB threads per worker process default to the cores shared
    # among WEB_CONCURRENCY Gunicorn workers; the pool bounds concurrent queries
    # per worker (more than the threads, so a slow query never stalls fast ones).
    duckdb_threads: int = Field(
        default_factory=lambda: _default_duckdb_threads(), validation_alias="DUCKDB_THREADS", ge=1
    )
    query_workers: int = Field(
        default_factory=lambda: _default_query_workers(), validation_alias="QUERY_WORKERS", ge=1
    )
    result_cache_bytes: int = Field(100_000_000, validation_alias="RESULT_CACHE_BYTES", ge=0)
    # All-in-one (`analytics-api serve --with-etl` sets it): the ETL's scheduler
    # runs inside the one worker, with a share of the memory (ops/all_in_one.py).
    all_in_one: bool = Field(False, validation_alias="ALL_IN_ONE")
    compress_min_bytes: int = Field(1024, validation_alias="COMPRESS_MIN_BYTES", ge=0)
    stream_max_rows: int = Field(1_000_000, validation_alias="STREAM_MAX_ROWS", ge=1)
    stream_max_bytes: int = Field(256_000_000, validation_alias="STREAM_MAX_BYTES", ge=1024)
    metrics_enabled: bool = Field(True, validation_alias="METRICS_ENABLED")
    # A whole stream's deadline (from the request's start, not per batch), and
    # how long a client may read nothing before its stream is closed.
    stream_timeout_seconds: float = Field(60.0, validation_alias="STREAM_TIMEOUT_SECONDS", gt=0)
    stream_idle_write_seconds: float = Field(
        10.0, validation_alias="STREAM_IDLE_WRITE_SECONDS", gt=0
    )
    # Queries one user (one app: default the whole pool) may have running per
    # worker process, and how many more one user may have waiting (admission.py).
    max_concurrent_queries_per_user: int = Field(
        2, validation_alias="MAX_CONCURRENT_QUERIES_PER_USER", ge=1
    )
    max_queued_queries_per_user: int = Field(
        16, validation_alias="MAX_QUEUED_QUERIES_PER_USER", ge=0
    )
    max_concurrent_queries_per_app: int | None = Field(
        None, validation_alias="MAX_CONCURRENT_QUERIES_PER_APP", ge=1
    )
    # With REDIS_URL the caps above are counted across workers (query/shared_slots.py):
    # a killed worker's slots come back after this long.
    query_slot_lease_seconds: float = Field(
        30.0, validation_alias="QUERY_SLOT_LEASE_SECONDS", ge=1, le=3600
    )
    # Signs page cursors and /events tickets (auth/signing.py); unset: a random
    # key per host. Several hosts behind one load balancer must share one.
    api_signing_secret: str | None = Field(
        None, validation_alias="API_SIGNING_SECRET", min_length=16, repr=False
    )
    events_max_connections: int = Field(100, validation_alias="EVENTS_MAX_CONNECTIONS", ge=1)
    events_max_connections_per_user: int = Field(
        4, validation_alias="EVENTS_MAX_CONNECTIONS_PER_USER", ge=1
    )
    events_heartbeat_seconds: float = Field(
        15.0, validation_alias="EVENTS_HEARTBEAT_SECONDS", gt=0, le=300
    )
    events_ticket_seconds: int = Field(60, validation_alias="EVENTS_TICKET_SECONDS", ge=5, le=3600)
    # The key of `"hash"` column masks (access/rules.py); required when a policy uses one.
    column_mask_secret: SecretStr | None = Field(None, validation_alias="COLUMN_MASK_SECRET")

    # The web console at /console (api_service/console/). Sign-in is the
    # authorization code flow with PKCE against CONSOLE_LOGIN_URL (default
    # https://AUTH0_DOMAIN) as the SPA application CONSOLE_AUTH0_CLIENT_ID.
    console_enabled: bool = Field(True, validation_alias="CONSOLE_ENABLED")
    console_auth0_client_id: str | None = Field(None, validation_alias="CONSOLE_AUTH0_CLIENT_ID")
    console_login_url: str | None = Field(None, validation_alias="CONSOLE_LOGIN_URL")
    console_scopes: str = Field(
        "openid read:analytics read:schema read:status admin:etl",
        validation_alias="CONSOLE_SCOPES",
    )
    console_freshness_target_seconds: float = Field(
        600.0, validation_alias="CONSOLE_FRESHNESS_TARGET_SECONDS", gt=0
    )
    console_poll_seconds: float = Field(5.0, validation_alias="CONSOLE_POLL_SECONDS", gt=0)
    # The ETL's state database: POST /admin/commands hands commands to its worker.
    etl_state_database_url: str | None = Field(None, validation_alias="ETL_STATE_DATABASE_URL")

    @field_validator("auth0_algorithms", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("auth0_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"}
        bad = [a for a in value if a not in allowed]
        if bad or not value:
            raise ValueError(
                f"only asymmetric algorithms are accepted ({', '.join(sorted(allowed))})"
            )
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError("each origin must be scheme://host[:port] (no path) or *")
        return value

    @field_validator("auth0_domain")
    @classmethod
    def _bare_domain(cls, value: str | None) -> str | None:
        """`https://acme.eu.auth0.com/` is taken as `acme.eu.auth0.com`; a path is refused."""
        if not value:
            return None
        domain = re.sub(r"^https?://", "", value.strip()).rstrip("/")
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", domain):
            raise ValueError(
                f"must be the tenant's host name only, like acme.eu.auth0.com (got {value!r})"
            )
        return domain

    @field_validator("auth0_issuer")
    @classmethod
    def _issuer_slash(cls, value: str | None) -> str | None:
        if value and not value.endswith("/"):
            # Auth0 writes `iss` with the slash: without it every token is refused.
            raise ValueError(f"must end with '/' as tokens carry it: set AUTH0_ISSUER={value}/")
        return value or None

    @field_validator("auth0_api_audience")
    @classmethod
    def _audience(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    @model_validator(mode="after")
    def _auth_is_configured(self) -> ApiSettings:
        if not self.auth0_api_audience:
            raise ValueError(
                "AUTH0_API_AUDIENCE is required: set it to the API identifier in Auth0"
                " (APIs -> your API -> Identifier)"
            )
        if not self.auth0_domain and not (self.auth0_jwks_url and self.auth0_issuer):
            raise ValueError("set AUTH0_DOMAIN, or both AUTH0_JWKS_URL and AUTH0_ISSUER")
        return self

    @property
    def guard_limits(self) -> GuardLimits:
        return GuardLimits(
            table_references=self.guard_max_table_references,
            joins=self.guard_max_joins,
            set_operations=self.guard_max_set_operations,
            expression_nodes=self.guard_max_expression_nodes,
            expression_depth=self.guard_max_expression_depth,
        )

    @property
    def issuer(self) -> str:
        return self.auth0_issuer or f"https://{self.auth0_domain}/"

    @property
    def jwks_url(self) -> str:
        return self.auth0_jwks_url or f"https://{self.auth0_domain}/.well-known/jwks.json"

    @property
    def console_login_base(self) -> str | None:
        """The authorization server the console signs in with (None: not configured)."""
        if not self.console_auth0_client_id:
            return None
        base = self.console_login_url or (
            f"https://{self.auth0_domain}" if self.auth0_domain else None
        )
        return base.rstrip("/") if base else None

    @property
    def cache_dir(self) -> Path:
        return (self.data_dir / "api-cache").resolve()
