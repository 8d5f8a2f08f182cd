"""The API's one settings class (environment variables, seed-compatible names)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from analytics_shared.settings import CommonSettings
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

__all__ = ["ApiSettings"]


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


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

    rate_limit_requests: int = Field(50, validation_alias="RATE_LIMIT_REQUESTS", ge=1)
    rate_limit_window: int = Field(60, validation_alias="RATE_LIMIT_WINDOW", ge=1)
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CORS_ORIGINS"
    )
    query_whitelist_path: Path | None = Field(None, validation_alias="QUERY_WHITELIST_PATH")

    snapshot_poll_seconds: float = Field(10.0, validation_alias="SNAPSHOT_POLL_SECONDS", gt=0)
    query_timeout_seconds: float = Field(10.0, validation_alias="QUERY_TIMEOUT_SECONDS", gt=0)
    max_result_rows: int = Field(10_000, validation_alias="MAX_RESULT_ROWS", ge=1)
    max_sql_length: int = Field(20_000, validation_alias="MAX_SQL_LENGTH", ge=100)
    duckdb_memory_limit: str = Field("1GB", validation_alias="DUCKDB_MEMORY_LIMIT")
    duckdb_threads: int = Field(2, validation_alias="DUCKDB_THREADS", ge=1)

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

    @model_validator(mode="after")
    def _auth_is_configured(self) -> ApiSettings:
        if not self.auth0_api_audience:
            raise ValueError("AUTH0_API_AUDIENCE is required")
        if not self.auth0_domain and not (self.auth0_jwks_url and self.auth0_issuer):
            raise ValueError("set AUTH0_DOMAIN, or both AUTH0_JWKS_URL and AUTH0_ISSUER")
        return self

    @property
    def issuer(self) -> str:
        return self.auth0_issuer or f"https://{self.auth0_domain}/"

    @property
    def jwks_url(self) -> str:
        return self.auth0_jwks_url or f"https://{self.auth0_domain}/.well-known/jwks.json"

    @property
    def cache_dir(self) -> Path:
        return (self.data_dir / "api-cache").resolve()
