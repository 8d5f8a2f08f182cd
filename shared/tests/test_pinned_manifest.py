"""The manifest's boundaries, pinned (the mutation run found them unchecked):
the smallest legal values pass and the next ones down are refused, manifests
are immutable, a format_version other than this build's is refused, age
counts forward, and sha256_file reads any size in chunks."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest

from analytics_shared.manifest import (
    FORMAT_VERSION,
    ColumnSchema,
    LakeInfo,
    Manifest,
    ManifestError,
    ModelInfo,
    SchemaChange,
    TableInfo,
    sha256_file,
)


def _doc(**fields: Any) -> dict[str, Any]:
    return {
        "version": "v",
        "created_at": "2026-01-01T00:00:00+00:00",
        "snapshot_key": "k",
        "sha256": "0" * 64,
        "size": 1,
        **fields,
    }


def test_the_smallest_legal_values_pass():
    m = Manifest.from_json(
        json.dumps(
            _doc(
                tables={"t": {"row_count": 0}},
                models={"m": {"kind": "table", "row_count": 0, "sql_sha256": "a" * 64}},
                lake={"snapshot_id": 0, "metadata_schema": "s"},
            )
        )
    )
    assert m.lake is not None and m.lake.snapshot_id == 0
    assert (m.version, m.snapshot_key, m.size) == ("v", "k", 1)
    assert m.tables["t"].row_count == 0 and m.models["m"].row_count == 0
    assert FORMAT_VERSION == 1 and m.format_version == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"version": ""},
        {"snapshot_key": ""},
        {"size": 0},
        {"tables": {"t": {"row_count": -1}}},
        {"models": {"m": {"kind": "table", "row_count": -1, "sql_sha256": "a" * 64}}},
        {"lake": {"snapshot_id": -1, "metadata_schema": "s"}},
        {"format_version": 0},
        {"format_version": 2},
    ],
    ids=["empty_version", "empty_key", "zero_size", "negative_rows", "negative_model_rows",
         "negative_lake_snapshot",
         "older_format", "newer_format"],
)  # fmt: skip
def test_values_past_the_boundary_are_refused(fields):
    with pytest.raises(ManifestError):
        Manifest.from_json(json.dumps(_doc(**fields)))


def test_manifests_and_their_parts_are_immutable():
    m = Manifest.from_json(json.dumps(_doc()))
    parts = [
        m,
        TableInfo(row_count=1),
        ColumnSchema(name="a", type="INTEGER"),
        ModelInfo(kind="view", sql_sha256="a" * 64),
        LakeInfo(snapshot_id=1, metadata_schema="s"),
        SchemaChange(table="t", detected_at=datetime.now(UTC), contract="evolve", action="evolved"),
    ]
    for part in parts:
        field = next(iter(type(part).model_fields))
        with pytest.raises(pydantic.ValidationError):
            setattr(part, field, getattr(part, field))


def test_age_counts_forward_from_created_at():
    m = Manifest.from_json(
        json.dumps(_doc(created_at=(datetime.now(UTC) - timedelta(seconds=90)).isoformat()))
    )
    assert 89 < m.age_seconds < 90 + 60


def test_to_json_round_trips_and_is_indented():
    m = Manifest.from_json(json.dumps(_doc()))
    raw = m.to_json()
    assert Manifest.from_json(raw) == m
    assert raw.startswith(b'{\n  "format_version"')


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 7])
def test_sha256_file_hashes_every_byte(tmp_path, size):
    data = bytes((i * 31 + size) % 251 for i in range(size))
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
