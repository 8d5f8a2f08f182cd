"""Settings pieces both services share, and one way to load a settings class.

Each service has exactly one `BaseSettings` subclass (etl_service.settings,
api_service.settings); they inherit the storage and logging fields here so the
variable names are the same everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from analytics_shared.cli_edge import register_secret, register_url_secrets
from analytics_shared.errors import ConfigurationError
from analytics_shared.object_store import ObjectStore, open_store

__all__ = ["CommonSettings", "SettingsError", "load_settings"]

T = TypeVar("T", bound=BaseSettings)


class SettingsError(ConfigurationError, SystemExit):
    """Raised with a message naming the variables at fault (never their values).

    A SystemExit, so an uncaught one still ends the process with its message;
    a ConfigurationError, so the command-line edge exits with the
    configuration code (analytics_shared.cli_edge)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    log_json: bool = Field(True, validation_alias="LOG_JSON")
    # Where local working files live (state DB, working DuckDB, API cache).
    data_dir: Path = Field(Path("var"), validation_alias="DATA_DIR")
    # The container's memory when the cgroup does not say it (analytics_shared.memory_limit).
    memory_limit: str | None = Field(None, validation_alias="MEMORY_LIMIT")

    storage_url: str | None = Field(None, validation_alias="STORAGE_URL")
    s3_bucket: str | None = Field(None, validation_alias="S3_BUCKET")
    s3_prefix: str = Field("", validation_alias="S3_PREFIX")
    s3_region: str | None = Field(
        None, validation_alias=AliasChoices("S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    s3_endpoint_url: str | None = Field(None, validation_alias="S3_ENDPOINT_URL")
    aws_access_key_id: str | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")

    # Lake mode (docs/architecture.md, "Lake mode"): `file` publishes single-file
    # snapshots (the default); `lake` commits each cycle's changes to a DuckLake
    # (catalog in PostgreSQL, Parquet under STORAGE_URL/lake/) and each API host
    # serves a local replica it advances by the change.
    publish_mode: Literal["file", "lake"] = Field("file", validation_alias="PUBLISH_MODE")
    # The lake's PostgreSQL catalog (the ETL defaults to DATABASE_URL) and its schema.
    lake_catalog_url: SecretStr | None = Field(None, validation_alias="LAKE_CATALOG_URL")
    lake_metadata_schema: str = Field("ducklake", validation_alias="LAKE_METADATA_SCHEMA")
    # The lake environment's interpreter (DuckDB 1.5.5); default: the project's .venv-lake.
    lake_python: str | None = Field(None, validation_alias="LAKE_PYTHON")
    # A lake process is kept between calls (loading it costs ~1 s) and ends after
    # this long unused, or after a call that left it above this size (MB).
    lake_process_idle_seconds: float = Field(
        120.0, gt=0, validation_alias="LAKE_PROCESS_IDLE_SECONDS"
    )
    lake_process_max_rss_mb: float = Field(300.0, gt=0, validation_alias="LAKE_PROCESS_MAX_RSS_MB")
    # The lake process's DuckDB memory_limit: it shares the container with its
    # service; commits and replica rounds stream and spill past it.
    lake_duckdb_memory_limit: str = Field("128MB", validation_alias="LAKE_DUCKDB_MEMORY_LIMIT")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("file:///", "s3://")):
            raise ValueError("must start with file:/// (absolute folder) or s3://bucket")
        return value or None

    @property
    def resolved_storage_url(self) -> str:
        """STORAGE_URL wins; else the seed's S3_BUCKET; else a local folder."""
        if self.storage_url:
            return self.storage_url
        if self.s3_bucket:
            return f"s3://{self.s3_bucket}/{self.s3_prefix}".rstrip("/")
        return (self.data_dir / "store").resolve().as_uri()

    def model_post_init(self, context: object, /) -> None:
        # Whatever is secret is masked in every message the CLIs print.
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                register_secret(value.get_secret_value())
                register_url_secrets(value.get_secret_value())
            elif isinstance(value, str) and "://" in value:
                register_url_secrets(value)

    def open_store(self) -> ObjectStore:
        secret = self.aws_secret_access_key
        url = self.resolved_storage_url
        try:
            return open_store(
                url,
                endpoint_url=self.s3_endpoint_url,
                region=self.s3_region,
                access_key_id=self.aws_access_key_id,
                secret_access_key=secret.get_secret_value() if secret else None,
            )
        except OSError as exc:  # a local folder that cannot be created
            raise ConfigurationError(
                f"STORAGE_URL: cannot use the folder {url.removeprefix('file://')}"
                f" ({exc.strerror or exc}); point STORAGE_URL at a writable folder"
            ) from exc
        except ValueError as exc:
            raise ConfigurationError(f"STORAGE_URL: {exc}") from exc


def _env_name(cls: type[BaseSettings], field: str) -> str:
    info = cls.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field.upper()


def _undecodable(cls: type[BaseSettings], exc: PydanticSettingsError) -> str:
    found = re.search(r'field "([^"]+)"', str(exc))
    if found is None:
        return str(exc).split(" from source")[0]
    # The decoder's reason names a position, never the value (it may be a secret).
    reason = f" ({exc.__cause__})" if isinstance(exc.__cause__, ValueError) else ""
    return f"{_env_name(cls, found.group(1))}: is not valid JSON{reason}"


def load_settings(cls: type[T], **overrides: object) -> T:
    """Instantiate a settings class; on failure exit with a readable message.

    Pydantic's default message echoes input values, which may be secrets, so
    the message is rebuilt from the variable names and reasons only.
    """
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except PydanticSettingsError as exc:
        # Raised before validation when a value (JSON for dicts and lists) cannot
        # be decoded; pydantic names the field, the operator knows the variable.
        raise SettingsError(f"invalid configuration: {_undecodable(cls, exc)}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # "Value error, ..." is pydantic's framing, not the reason.
            reason = (
                str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            )
            if err["loc"]:
                problems.append(f"{_env_name(cls, str(err['loc'][0]))}: {reason}")
            else:  # a check across settings: its message names them
                problems.append(reason)
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
