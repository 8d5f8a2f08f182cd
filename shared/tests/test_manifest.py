from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from analytics_shared.manifest import Manifest, ManifestError, TableInfo, new_version_id


def _manifest(**over) -> Manifest:
    base = dict(
        version=new_version_id(),
        created_at=datetime.now(UTC),
        snapshot_key="history/analytics_x.db",
        sha256="a" * 64,
        size=10,
        tables={"inventory": TableInfo(row_count=3, watermark="2026-01-01 00:00:00.1234567")},
    )
    base.update(over)
    return Manifest(**base)


def test_round_trip_keeps_watermark_precision():
    m = _manifest()
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.tables["inventory"].watermark == "2026-01-01 00:00:00.1234567"


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"not json", "invalid manifest"),
        (b"{}", "version"),
        (
            b'{"version": "v", "created_at": "2026-01-01T00:00:00", "snapshot_key": "k",'
            b' "sha256": "' + b"a" * 64 + b'", "size": 1}',
            "time zone",
        ),
        (
            b'{"version": "v", "created_at": "2026-01-01T00:00:00Z", "snapshot_key": "../k",'
            b' "sha256": "' + b"a" * 64 + b'", "size": 1}',
            "snapshot_key",
        ),
        (
            b'{"version": "v", "created_at": "2026-01-01T00:00:00Z", "snapshot_key": "k",'
            b' "sha256": "xyz", "size": 1}',
            "sha256",
        ),
    ],
)
def test_malformed_manifests_are_clear_errors(raw, fragment):
    with pytest.raises(ManifestError, match=fragment):
        Manifest.from_json(raw)


def test_unknown_format_version_is_refused():
    doc = json.loads(_manifest().to_json())
    doc["format_version"] = 99
    with pytest.raises(ManifestError, match="format_version"):
        Manifest.from_json(json.dumps(doc))


def test_version_ids_sort_by_time():
    a = new_version_id(datetime(2026, 1, 1, tzinfo=UTC))
    b = new_version_id(datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    assert a < b
