"""The ETL's one settings class (environment variables, seed-compatible names)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote_plus

from analytics_shared.settings import CommonSettings
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

__all__ = ["EtlSettings"]


class EtlSettings(CommonSettings):
    # Source: SOURCE_URL (any SQLAlchemy URL) wins over the MSSQL_* parts.
    source_url: SecretStr | None = Field(None, validation_alias="SOURCE_URL")
    mssql_host: str | None = Field(None, validation_alias="MSSQL_HOST")
    mssql_port: int = Field(1433, validation_alias="MSSQL_PORT", gt=0, lt=65536)
    mssql_database: str | None = Field(None, validation_alias="MSSQL_DATABASE")
    mssql_username: str | None = Field(None, validation_alias="MSSQL_USERNAME")
    mssql_password: SecretStr | None = Field(None, validation_alias="MSSQL_PASSWORD")
    mssql_driver: str = Field("ODBC Driver 18 for SQL Server", validation_alias="MSSQL_DRIVER")
    mssql_trust_server_certificate: bool = Field(
        False, validation_alias="MSSQL_TRUST_SERVER_CERTIFICATE"
    )

    # State store (watermarks, run history, dead letters): SQLite file by default.
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")

    sync_interval_seconds: int = Field(60, validation_alias="SYNC_INTERVAL_SECONDS", ge=1)
    batch_size: int = Field(10_000, validation_alias="BATCH_SIZE", ge=1, le=10_000_000)
    tables_to_sync: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["inventory", "products", "orders"],
        validation_alias="TABLES_TO_SYNC",
    )
    snapshot_retention: int = Field(24, validation_alias="SNAPSHOT_RETENTION", ge=1)

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
        trust = "yes" if self.mssql_trust_server_certificate else "no"
        return (
            f"mssql+pyodbc://{quote_plus(self.mssql_username)}:{quote_plus(password)}"
            f"@{self.mssql_host}:{self.mssql_port}/{self.mssql_database}"
            f"?driver={quote_plus(self.mssql_driver)}&TrustServerCertificate={trust}"
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'etl_state.db').resolve()}"

    @property
    def working_db_path(self):
        return (self.data_dir / "etl_working.duckdb").resolve()
