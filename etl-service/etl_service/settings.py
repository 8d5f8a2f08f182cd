"""The ETL's one settings class (environment variables, seed-compatible names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import sqlalchemy as sa
from pydantic import Field, FilePath, SecretStr, field_validator
from pydantic_settings import NoDecode

from analytics_shared.settings import CommonSettings

__all__ = ["EtlSettings", "database_url"]

# The PostgreSQL driver this project installs (psycopg 3); `postgres://` (Heroku,
# Railway, Render) and a bare `postgresql://` would otherwise ask for psycopg2.
_PG_SCHEMES = ("postgres://", "postgresql://")


def database_url(url: str) -> str:
    """A SQLAlchemy URL with the installed PostgreSQL driver; ValueError when unparsable."""
    for scheme in _PG_SCHEMES:
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url[len(scheme) :]
            break
    try:
        sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(
            "is not a database URL (expected e.g. postgresql://user:password@host:5432/db"
            " or sqlite:////absolute/path.db)"
        ) from None
    return url


class EtlSettings(CommonSettings):
    # Source: SOURCE_URL (any SQLAlchemy URL) wins over the MSSQL_* parts.
    source_url: SecretStr | None = Field(None, validation_alias="SOURCE_URL")
    mssql_host: str | None = Field(None, validation_alias="MSSQL_HOST")
    mssql_port: int = Field(1433, validation_alias="MSSQL_PORT", gt=0, lt=65536)
    mssql_database: str | None = Field(None, validation_alias="MSSQL_DATABASE")
    mssql_username: str | None = Field(None, validation_alias="MSSQL_USERNAME")
    mssql_password: SecretStr | None = Field(None, validation_alias="MSSQL_PASSWORD")
    # TLS to SQL Server (docs/deployment-guide.md): required by default. ConnectorX
    # (the rows) checks the certificate against the system trust store, or
    # MSSQL_CA_FILE; MSSQL_TRUST_SERVER_CERTIFICATE skips the check (self-signed
    # development servers only).
    mssql_encrypt: bool = Field(True, validation_alias="MSSQL_ENCRYPT")
    mssql_trust_server_certificate: bool = Field(
        False, validation_alias="MSSQL_TRUST_SERVER_CERTIFICATE"
    )
    mssql_ca_file: FilePath | None = Field(None, validation_alias="MSSQL_CA_FILE")

    # State store (watermarks, run history, dead letters): SQLite file by default.
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")

    sync_interval_seconds: int = Field(60, validation_alias="SYNC_INTERVAL_SECONDS", ge=1)
    batch_size: int = Field(10_000, validation_alias="BATCH_SIZE", ge=1, le=10_000_000)
    # Full loads and backfills log rows done, rows/s and the time left this often.
    progress_log_seconds: float = Field(5.0, validation_alias="PROGRESS_LOG_SECONDS", gt=0)
    tables_to_sync: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["inventory", "products", "orders"],
        validation_alias="TABLES_TO_SYNC",
    )
    snapshot_retention: int = Field(24, validation_alias="SNAPSHOT_RETENTION", ge=1)
    # Retention never deletes a snapshot younger than this: a reader may have
    # read the manifest that names it and still be downloading it.
    snapshot_retention_grace_seconds: float = Field(
        900.0, validation_alias="SNAPSHOT_RETENTION_GRACE_SECONDS", ge=0
    )
    # Lake mode (PUBLISH_MODE=lake): compaction and snapshot expiry run at most
    # once per interval; snapshots older than the retention are expired (an API
    # host whose replica is older re-bootstraps).
    lake_maintenance_interval_seconds: float = Field(
        3600.0, validation_alias="LAKE_MAINTENANCE_INTERVAL_SECONDS", ge=0
    )
    lake_snapshot_retention_seconds: float = Field(
        86400.0, validation_alias="LAKE_SNAPSHOT_RETENTION_SECONDS", ge=0
    )
    # Per-run JSON logs under logs/etl_sync_<date>/ are deleted after this many
    # days (0: kept forever); checked once a day.
    run_log_retention_days: int = Field(30, validation_alias="RUN_LOG_RETENTION_DAYS", ge=0)
    # "zstd" (default) or "none"; DuckDB files compress well (mostly empty blocks).
    snapshot_compression: Literal["zstd", "none"] = Field(
        "zstd", validation_alias="SNAPSHOT_COMPRESSION"
    )

    # Incremental sync (see etl_service.incremental): rows with
    # cursor >= watermark - lookback are re-read; the new watermark is the
    # source's clock minus the settle lag, so late commits are still caught.
    sync_lookback_seconds: float = Field(60.0, validation_alias="SYNC_LOOKBACK_SECONDS", ge=0)
    sync_settle_seconds: float = Field(5.0, validation_alias="SYNC_SETTLE_SECONDS", ge=0)
    # The zone naive cursor columns (datetime2, timestamp) are written in.
    source_timezone: str = Field("UTC", validation_alias="SOURCE_TIMEZONE", min_length=1)
    # Primary-key reconciliation (hard deletes); 0 = every cycle.
    reconcile_interval_seconds: float = Field(
        3600.0, validation_alias="RECONCILE_INTERVAL_SECONDS", ge=0
    )
    # Per-table overrides as JSON: {"orders": {"primary_key": ["id"],
    # "cursor_column": "modified_at", "soft_delete_column": "deleted_at"}}.
    table_config: dict[str, dict[str, Any]] = Field(
        default_factory=dict, validation_alias="TABLE_CONFIG"
    )
    # Models (views and rollups as *.sql files) built into every snapshot:
    # unset = the bundled models, empty = none, a path = that folder.
    models_dir: str | None = Field(None, validation_alias="MODELS_DIR")

    # Retries on transient errors (exponential backoff, full jitter).
    retry_attempts: int = Field(4, validation_alias="RETRY_ATTEMPTS", ge=1, le=20)
    retry_base_seconds: float = Field(1.0, validation_alias="RETRY_BASE_SECONDS", ge=0)
    retry_max_seconds: float = Field(30.0, validation_alias="RETRY_MAX_SECONDS", ge=0)

    # Observability: /health and /metrics on this port (0 disables), and alerts.
    etl_metrics_port: int = Field(9108, validation_alias="ETL_METRICS_PORT", ge=0, lt=65536)
    alert_webhook_url: SecretStr | None = Field(None, validation_alias="ALERT_WEBHOOK_URL")
    alert_webhook_format: Literal["slack", "pagerduty", "opsgenie"] = Field(
        "slack", validation_alias="ALERT_WEBHOOK_FORMAT"
    )
    alert_routing_key: SecretStr | None = Field(None, validation_alias="ALERT_ROUTING_KEY")
    alert_failure_threshold: int = Field(3, validation_alias="ALERT_FAILURE_THRESHOLD", ge=1)
    alert_stale_after_seconds: float = Field(
        900.0, validation_alias="ALERT_STALE_AFTER_SECONDS", gt=0
    )

    @field_validator("source_url", "database_url", mode="before")
    @classmethod
    def _database_url(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str) and raw.strip():
            return database_url(raw.strip())
        return None if isinstance(raw, str) else value

    @field_validator("table_config", mode="before")
    @classmethod
    def _parse_table_config(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("tables_to_sync", mode="before")
    @classmethod
    def _split_tables(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("tables_to_sync")
    @classmethod
    def _valid_table_names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one table")
        for name in value:
            if not name.replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"{name!r} is not a plain table name")
        return value

    @property
    def resolved_source_url(self) -> str:
        if self.source_url:
            return self.source_url.get_secret_value()
        if not (self.mssql_host and self.mssql_database and self.mssql_username):
            raise ValueError(
                "no source configured: set SOURCE_URL, or MSSQL_HOST, MSSQL_DATABASE,"
                " MSSQL_USERNAME and MSSQL_PASSWORD"
            )
        password = self.mssql_password.get_secret_value() if self.mssql_password else ""
        # pymssql (FreeTDS inside its wheel) for SQLAlchemy's reflection. SQLAlchemy
        # hands every query key to pymssql.connect() as a keyword: only
        # `encryption` goes here (connectorx_url() reads it too).
        return (
            f"mssql+pymssql://{quote(self.mssql_username, safe='')}:{quote(password, safe='')}"
            f"@{self.mssql_host}:{self.mssql_port}/{self.mssql_database}"
            f"?encryption={'require' if self.mssql_encrypt else 'request'}"
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'etl_state.db').resolve()}"

    @property
    def working_db_path(self) -> Path:
        return (self.data_dir / "etl_working.duckdb").resolve()
