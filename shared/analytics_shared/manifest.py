"""The manifest: the small JSON document whose write publishes a snapshot.

`current/manifest.json` names exactly one immutable snapshot in `history/`;
readers trust nothing else. Parsing is strict so a malformed or foreign
manifest is a clear `ManifestError`, never a half-understood version.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from analytics_shared.errors import AnalyticsError

__all__ = [
    "MANIFEST_KEY",
    "STATUS_KEY",
    "ColumnSchema",
    "LakeInfo",
    "Manifest",
    "ManifestError",
    "ModelInfo",
    "SchemaChange",
    "TableInfo",
    "new_version_id",
    "sha256_file",
]

MANIFEST_KEY = "current/manifest.json"
# The ETL's status as data (etl_service.ops.status_file), served at the API's GET /status.
STATUS_KEY = "current/status.json"
FORMAT_VERSION = 1


class ManifestError(AnalyticsError, ValueError):
    """The manifest is missing required fields, has wrong types or is not JSON."""


class ColumnSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    type: str


class TableInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    row_count: int = Field(ge=0)
    # Watermarks are strings so the source's full precision survives
    # (SQL Server datetime2 has 100 ns ticks; Python datetimes stop at 1 us).
    watermark: str | None = None
    columns: list[ColumnSchema] = Field(default_factory=list)


class ModelInfo(BaseModel):
    """A model (a view or table built from SQL files by the ETL) in the snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: Literal["view", "table"]
    description: str = ""
    row_count: int | None = Field(default=None, ge=0)
    sql_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    depends_on: list[str] = Field(default_factory=list)
    columns: list[ColumnSchema] = Field(default_factory=list)


class SchemaChange(BaseModel):
    """A source table's column set or types changed, and what its contract did."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    table: str
    detected_at: datetime
    contract: str  # evolve | freeze | discard_new_columns
    action: str  # evolved (reloaded) | refused (old shape kept) | discarded (new columns ignored)
    added: list[ColumnSchema] = Field(default_factory=list)
    removed: list[ColumnSchema] = Field(default_factory=list)
    # name -> [old type, new type]
    retyped: dict[str, list[str]] = Field(default_factory=dict)


class LakeInfo(BaseModel):
    """Lake mode: the DuckLake snapshot a version names, and how to check a replica.

    `checksums` are order-independent per-table hashes (row count and two
    xor-ed row hashes, as computed by `snapshot_file.table_checksum`); a replica
    that does not match them is not served."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    snapshot_id: int = Field(ge=0)
    metadata_schema: str
    checksums: dict[str, str] = Field(default_factory=dict)
    primary_keys: dict[str, list[str]] = Field(default_factory=dict)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("created_at must carry a time zone")
    return value.astimezone(UTC)


def _relative_key(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError("snapshot_key must be a relative key inside the store")
    return value


class Manifest(BaseModel):
    # Compatibility rule: optional fields may be added within one format_version
    # and readers ignore fields they do not know (an older API keeps working
    # with a newer ETL); anything that changes the meaning of an existing field
    # bumps FORMAT_VERSION, which readers refuse.
    model_config = ConfigDict(extra="ignore", frozen=True)

    format_version: int = FORMAT_VERSION
    version: str = Field(pattern=r"^[0-9A-Za-z_.-]+$")
    created_at: Annotated[datetime, AfterValidator(_aware)]
    snapshot_key: Annotated[str, AfterValidator(_relative_key)] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    compression: str | None = None
    previous_version: str | None = None
    tables: dict[str, TableInfo] = Field(default_factory=dict)
    # Hash of the tables' contents and schema: a cycle that changed nothing
    # has the same fingerprint and publishes nothing.
    content_fingerprint: str | None = None
    # Set by `analytics-etl rollback`: the newest version the operator rolled
    # back from; the ETL does not re-publish that same data over the rollback.
    rolled_back_from: str | None = None
    # Models built into the snapshot (etl_service.models), readable like tables.
    models: dict[str, ModelInfo] = Field(default_factory=dict)
    # Source schema changes seen since the previous version (etl_service.contracts).
    schema_changes: list[SchemaChange] = Field(default_factory=list)
    # Lake mode: the version is a DuckLake snapshot (version "lake-<snapshot_id>");
    # `snapshot_key` names the lake's prefix, `sha256`/`size` identify the
    # replica's expected content (the checksums) instead of a file.
    lake: LakeInfo | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        try:
            manifest = cls.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ManifestError(f"invalid manifest: {problems}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ManifestError(
                f"unsupported manifest format_version {manifest.format_version}"
                f" (this build reads {FORMAT_VERSION})"
            )
        return manifest

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - self.created_at).total_seconds()

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "size": self.size,
            "tables": {name: t.row_count for name, t in self.tables.items()},
        }


def new_version_id(now: datetime | None = None) -> str:
    """Sortable, unique-enough version id: UTC time to the microsecond."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ")


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
