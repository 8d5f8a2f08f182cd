"""Every encoding round-trips DuckDB's own answer: decimals, big integers,
timestamps with time zones, UUIDs, NULLs, unicode, control characters."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import math
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import brotli
import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api_service.query import encodings
from api_service.query.encodings import Column, json_body, negotiate_format
from testsupport.api_app import make_app_client, serving_env
from testsupport.publishing import publish_file
from testsupport.serving import build_database

SQL = "SELECT * FROM customers ORDER BY id"
JS_SAFE = 2**53 - 1


@pytest.fixture(scope="module")
def served(tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("encodings")
    db = build_database(root / "source.db")
    publish_file(db, root / "store", root / "work")
    auth = issuer.settings_env()
    with make_app_client(serving_env(root / "store", root / "data", auth)) as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='encodings')}"
        yield client, db


def expected_rows(db: Path, sql: str = SQL) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


def expected_arrow(db: Path, sql: str = SQL) -> pa.Table:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def same_floats(got: list[Any], want: list[Any]) -> bool:
    return all(
        (g is None and w is None) or g == w or (math.isnan(g) and math.isnan(w))
        for g, w in zip(got, want, strict=True)
    )


def check_value(got: Any, want: Any, *, text: bool = False) -> None:
    """`got` is the decoded JSON value (or CSV text when `text`)."""
    if want is None:
        assert got in ((None, "") if text else (None,)), got
    elif isinstance(want, bool):
        assert got == (str(want).lower() if text else want)
    elif isinstance(want, int):
        if text:
            assert int(got) == want
        elif abs(want) > JS_SAFE:
            assert isinstance(got, str) and int(got) == want  # precision kept as a string
        else:
            assert isinstance(got, int) and got == want
    elif isinstance(want, Decimal):
        assert isinstance(got, str) and Decimal(got) == want
    elif isinstance(want, float):
        if math.isfinite(want):
            assert float(got) == want
        else:
            assert got in (None, "nan")
    elif isinstance(want, datetime):
        parsed = datetime.fromisoformat(got)
        assert parsed == want and (parsed.tzinfo is None) == (want.tzinfo is None)
    elif isinstance(want, date):
        assert date.fromisoformat(got) == want
    elif isinstance(want, uuid.UUID):
        assert uuid.UUID(got) == want
    elif isinstance(want, bytes):
        assert base64.b64decode(got) == want
    elif isinstance(want, list):
        assert (json.loads(got) if text else got) == want
    else:
        assert got == want


def test_json_objects_round_trip(served):
    client, db = served
    r = client.get("/query", params={"q": SQL})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == [
        "success",
        "data",
        "columns",
        "row_count",
        "truncated",
        "data_version",
        "execution_time_ms",
    ]
    names, rows = expected_rows(db)
    assert body["success"] is True and body["row_count"] == len(rows) and body["truncated"] is False
    assert [c["name"] for c in body["columns"]] == names
    types = {c["name"]: c["type"] for c in body["columns"]}
    assert types["balance"] == "DECIMAL(18,4)" and types["tstz"] == "TIMESTAMP WITH TIME ZONE"
    for got_row, want_row in zip(body["data"], rows, strict=True):
        assert list(got_row) == names
        for name, want in zip(names, want_row, strict=True):
            check_value(got_row[name], want)


def test_json_timestamps_follow_python_isoformat(served):
    client, _ = served
    r = client.get(
        "/query", params={"q": "SELECT ts, tstz FROM customers WHERE id IN (1, 4) ORDER BY id"}
    )
    data = r.json()["data"]
    assert data[0] == {"ts": "2026-03-01T12:34:56.789012", "tstz": "2026-03-01T10:00:00+00:00"}
    assert data[1] == {"ts": "2026-01-01T00:00:00", "tstz": "2026-01-01T00:00:00+00:00"}


def test_json_compact_arrays(served):
    client, db = served
    r = client.post("/query", json={"sql": SQL, "format": "json_compact"})
    assert r.status_code == 200, r.text
    body = r.json()
    names, rows = expected_rows(db)
    assert [c["name"] for c in body["columns"]] == names
    for got_row, want_row in zip(body["data"], rows, strict=True):
        assert isinstance(got_row, list)
        for got, want in zip(got_row, want_row, strict=True):
            check_value(got, want)


def test_ndjson_round_trip(served):
    client, db = served
    r = client.get("/query", params={"q": SQL}, headers={"Accept": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [c["name"] for c in json.loads(r.headers["x-columns"])] == expected_rows(db)[0]
    lines = r.text.splitlines()
    names, rows = expected_rows(db)
    assert len(lines) == len(rows)
    for line, want_row in zip(lines, rows, strict=True):
        got_row = json.loads(line)
        for name, want in zip(names, want_row, strict=True):
            check_value(got_row[name], want)


def test_csv_round_trip(served):
    client, db = served
    r = client.get("/query", params={"q": SQL, "format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    columns = json.loads(r.headers["x-columns"])
    assert {"name": "uid", "type": "UUID"} in columns
    reader = list(csv.reader(io.StringIO(r.text, newline="")))
    names, rows = expected_rows(db)
    assert reader[0] == names
    assert len(reader) - 1 == len(rows)
    for got_row, want_row in zip(reader[1:], rows, strict=True):
        for got, want in zip(got_row, want_row, strict=True):
            check_value(got, want, text=True)


def test_csv_header_even_without_rows(served):
    client, _ = served
    r = client.get(
        "/query", params={"q": "SELECT id, name FROM customers WHERE id < 0", "format": "csv"}
    )
    assert r.status_code == 200
    assert r.text == "id,name\n"


def test_arrow_ipc_is_duckdbs_own_arrow(served):
    client, db = served
    r = client.get(
        "/query", params={"q": SQL}, headers={"Accept": "application/vnd.apache.arrow.stream"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(r.content).read_all()
    want = expected_arrow(db)
    # NaN != NaN, so the float column is compared on its own
    assert table.drop_columns(["ratio"]).equals(want.drop_columns(["ratio"]), check_metadata=False)
    assert same_floats(table.column("ratio").to_pylist(), want.column("ratio").to_pylist())
    # decimals and big integers stay native; DuckDB type names ride along
    assert pa.types.is_decimal(table.schema.field("exact").type)
    assert table.schema.field("ubig").type == pa.uint64()
    meta = json.loads(table.schema.metadata[b"duckdb_types"])
    assert {"name": "huge", "type": "HUGEINT"} in meta
    assert table.schema.metadata[b"data_version"].decode() == r.headers["x-data-version"]


def test_parquet_round_trip(served):
    client, db = served
    r = client.post("/query", json={"sql": SQL, "format": "parquet"})
    assert r.status_code == 200, r.text
    table = pq.read_table(io.BytesIO(r.content))
    want = expected_arrow(db)
    assert table.column_names == want.column_names
    for name in want.column_names:
        if name == "ratio":
            assert same_floats(table.column(name).to_pylist(), want.column(name).to_pylist())
        else:
            assert table.column(name).to_pylist() == want.column(name).to_pylist(), name
    assert table.schema.field("balance").type == pa.decimal128(18, 4)


def test_interval_travels_as_text_everywhere(served):
    client, _ = served
    sql = "SELECT INTERVAL 3 DAY AS gap, 1 AS one"
    assert client.get("/query", params={"q": sql}).json()["data"] == [{"gap": "3 days", "one": 1}]
    r = client.get("/query", params={"q": sql, "format": "parquet"})
    assert pq.read_table(io.BytesIO(r.content)).column("gap").to_pylist() == ["3 days"]


@pytest.mark.parametrize(
    ("coding", "decode"), [("gzip", gzip.decompress), ("br", brotli.decompress)]
)
def test_large_text_is_compressed_when_accepted(served, coding, decode):
    client, _ = served
    sql = f"SELECT * FROM inventory ORDER BY id -- {coding}"
    plain = client.get("/query", params={"q": sql}, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    raw = client.stream("GET", "/query", params={"q": sql}, headers={"Accept-Encoding": coding})
    with raw as response:
        assert response.headers["content-encoding"] == coding
        body = b"".join(response.iter_raw())
    assert len(body) < len(plain.content) / 3
    assert json.loads(decode(body))["data"] == plain.json()["data"]


def test_small_responses_are_not_compressed(served):
    client, _ = served
    r = client.get("/query", params={"q": "SELECT 1 AS x"}, headers={"Accept-Encoding": "gzip, br"})
    assert "content-encoding" not in r.headers


def test_format_negotiation():
    assert negotiate_format(None, None).name == "json"
    assert (
        negotiate_format(None, "text/csv;q=0.5, application/vnd.apache.arrow.stream").name
        == "arrow"
    )
    assert negotiate_format(None, "text/html, */*").name == "json"
    assert negotiate_format("PARQUET", "text/csv").name == "parquet"
    with pytest.raises(ValueError, match="not supported"):
        negotiate_format("xml", None)


def test_unknown_format_is_refused(served):
    client, _ = served
    r = client.get("/query", params={"q": "SELECT 1", "format": "xml"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_format"


@pytest.mark.parametrize("repeat", [1, 2_000])  # small (regex scan) and large (kernel scan)
def test_string_escaping_is_the_same_for_small_and_large_columns(repeat):
    values = ["plain", 'say "hi"', "back\\slash", "tab\there", None, "ünï"] * repeat
    table = pa.table({"s": pa.array(values, pa.string())})
    body = json_body(
        table,
        [Column("s", "VARCHAR")],
        compact=False,
        truncated=False,
        data_version="v",
        execution_time_ms=0.0,
    )
    assert [row["s"] for row in orjson.loads(body)["data"]] == values
    no_control = pa.table({"s": pa.array([v for v in values if v != "tab\there"], pa.string())})
    body = json_body(
        no_control,
        [Column("s", "VARCHAR")],
        compact=False,
        truncated=False,
        data_version="v",
        execution_time_ms=0.0,
    )
    assert [row["s"] for row in orjson.loads(body)["data"]] == no_control.column("s").to_pylist()


# -- small results (Python values + orjson) and large ones (Arrow kernels) agree --
AWKWARD_SQL = r"""
SELECT * FROM (VALUES
 (1, 'Zoë "Q" \ naïve ✓ 東京 🚀', 1234.5678::DECIMAL(18,4), 0.0000000001::DECIMAL(38,10),
  170141183460469231731687303715884105727::HUGEINT, 18446744073709551615::UBIGINT,
  9007199254740993::BIGINT, -9007199254740991::BIGINT, 2147483647::INTEGER,
  TIMESTAMP '2026-03-01 12:34:56.789012', TIMESTAMPTZ '2026-03-01 12:00:00+02',
  TIMESTAMP_NS '2026-03-01 12:34:56.123456789', TIMESTAMP_MS '2026-03-01 12:34:56.5',
  TIMESTAMP_S '2026-03-01 12:34:56', DATE '2026-03-01', TIME '12:34:56',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID, 0.1::DOUBLE, 0.1::REAL, true,
  ['a', 'b"c'], {'k': 1.5::DECIMAL(4,2)}, '\xAA\x00'::BLOB, 'x'::ENUM ('x', 'y'),
  INTERVAL 3 DAY, 'tab' || chr(9) || 'nl' || chr(10) || 'bs\'),
 (2, NULL, -0.0001, 0, -42, 7, -9007199254740993, NULL, NULL,
  NULL, TIMESTAMPTZ '2026-07-01 00:00:00.5+00', NULL, NULL, NULL, NULL, NULL,
  NULL, 'nan'::DOUBLE, NULL, NULL, [], NULL, ''::BLOB, NULL, NULL, ''),
 (3, '', 0, NULL, 9007199254740991, 9007199254740991, 12, 0, -1,
  TIMESTAMP '2026-01-01 00:00:00', TIMESTAMPTZ '2026-01-01 00:00:00+00', NULL, NULL, NULL,
  DATE '1970-01-01', TIME '00:00:00.5', NULL, 1e300, 'inf'::REAL, false, NULL, NULL, NULL,
  'y', NULL, NULL)
) t(id, name, balance, exact, huge, ubig, big, big_safe, i32, ts, tstz, ts_ns, ts_ms,
    ts_s, day, tod, uid, ratio, real, active, tags, props, raw, mood, gap, ctl)
"""


def _awkward_table(repeat: int) -> tuple[pa.Table, list[Column]]:
    from api_service.query.executor import _capped_table, _relation

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'Europe/Amsterdam'")
        sql = f"SELECT t.* FROM ({AWKWARD_SQL}) t, range({repeat})"
        relation, columns = _relation(con.cursor(), sql, None)
        return _capped_table(relation, 1_000_000), columns
    finally:
        con.close()


def _both_paths(
    table: pa.Table, columns: list[Column], *, compact: bool
) -> tuple[bytes | None, bytes]:
    from api_service.query.encodings import _arrow_json_body, _small_json_body

    meta = {"truncated": False, "data_version": "v", "execution_time_ms": 1.5}
    tail = {"columns": [c.as_dict() for c in columns], "row_count": table.num_rows, **meta}
    small = _small_json_body(table, columns, compact=compact, tail=tail)
    return small, _arrow_json_body(table, columns, compact=compact, tail=tail)


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("compact", [False, True])
def test_small_and_large_json_paths_give_the_same_document(compact):
    table, columns = _awkward_table(1)
    without_real = [i for i, c in enumerate(columns) if c.name != "real"]
    kept = table.select(without_real), [columns[i] for i in without_real]
    cases = [kept, (kept[0].slice(0, 0), kept[1]), (kept[0].slice(2, 1), kept[1])]
    for t, cols in cases:
        small, large = _both_paths(t, cols, compact=compact)
        assert small is not None
        assert _same_json(orjson.loads(small), orjson.loads(large))
    # REAL (float32) has no exact Python twin: the small path hands it to Arrow.
    assert _both_paths(table, columns, compact=compact)[0] is None
    body = json_body(
        table, columns, compact=compact, truncated=False, data_version="v", execution_time_ms=1.5
    )
    assert body == _both_paths(table, columns, compact=compact)[1]


def test_small_json_path_keeps_the_precision_rules():
    table, columns = _awkward_table(1)
    keep = [i for i, c in enumerate(columns) if c.name != "real"]
    table, columns = table.select(keep), [columns[i] for i in keep]
    assert table.num_rows * table.num_columns <= encodings.SMALL_JSON_CELLS
    body = json_body(
        table, columns, compact=False, truncated=False, data_version="v", execution_time_ms=1.5
    )
    first, second, third = orjson.loads(body)["data"]
    assert first["balance"] == "1234.5678" and Decimal(first["exact"]) == Decimal("1e-10")
    assert first["huge"] == "170141183460469231731687303715884105727"
    assert first["ubig"] == "18446744073709551615" and first["big"] == "9007199254740993"
    assert first["big_safe"] == -9007199254740991 and second["big"] == "-9007199254740993"
    assert second["huge"] == -42 and third["ubig"] == 9007199254740991
    assert first["ts"] == "2026-03-01T12:34:56.789012"
    assert first["tstz"] == "2026-03-01T10:00:00+00:00"
    assert second["tstz"] == "2026-07-01T00:00:00.500000+00:00"
    assert first["ts_ns"] == "2026-03-01T12:34:56.123456789"
    assert first["day"] == "2026-03-01" and first["uid"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert first["raw"] == base64.b64encode(b"\xaa\x00").decode()
    assert first["props"] == {"k": "1.50"} and first["tags"] == ["a", 'b"c']
    assert first["gap"] == "3 days" and first["mood"] == "x"
    assert first["ctl"] == "tab\tnl\nbs\\" and first["name"] == 'Zoë "Q" \\ naïve ✓ 東京 🚀'
    assert second["ratio"] is None and second["name"] is None and third["ratio"] == 1e300


# 600 rows x 26 columns: past the small-path limit; 9,000 rows: several chunks
# of encodings.ROWS_PER_CHUNK, joined.
@pytest.mark.parametrize("repeat", [200, 3_000])
def test_json_paths_switch_on_size_and_agree(repeat):
    small_table, columns = _awkward_table(1)
    big_table, _ = _awkward_table(repeat)
    keep = [i for i, c in enumerate(columns) if c.name != "real"]
    cols = [columns[i] for i in keep]
    big = big_table.select(keep)
    assert big.num_rows * big.num_columns > encodings.SMALL_JSON_CELLS
    small, large = _both_paths(big, cols, compact=False)
    assert small is not None and _same_json(orjson.loads(small), orjson.loads(large))
    body = json_body(
        big, cols, compact=False, truncated=False, data_version="v", execution_time_ms=1.5
    )
    assert body == large
    assert small_table.num_rows == 3
    lines = encodings.ndjson_batch(big, cols).splitlines()
    assert _same_json([orjson.loads(line) for line in lines], orjson.loads(large)["data"])


def test_duplicate_column_names_keep_both_values():
    table = pa.table([pa.array([1]), pa.array([2])], names=["a", "a"])
    body = json_body(
        table,
        [Column("a", "BIGINT"), Column("a", "BIGINT")],
        compact=False,
        truncated=False,
        data_version="v",
        execution_time_ms=0.0,
    )
    assert b'{"a":1,"a":2}' in body


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
@pytest.mark.parametrize("tz", [None, "Europe/Amsterdam"])
@pytest.mark.parametrize("fractions", [False, True])
def test_timestamp_text_is_python_isoformat(unit, tz, fractions):
    # Whole-second columns take a shorter route than columns with fractions;
    # both must write what Python's isoformat() writes (UTC for time zones).
    from api_service.query.encodings import _iso

    values = [datetime(2026, 3, 1, 12, 34, 56), datetime(1999, 12, 31, 23, 59, 59), None]
    if fractions and unit != "s":
        values[1] = values[1].replace(microsecond=500_000)
    if tz:
        values = [v and v.replace(tzinfo=UTC) for v in values]
    column = pa.array(values, pa.timestamp(unit, tz=tz))
    got = _iso(column, column.type).to_pylist()
    want = [None if v is None else v.isoformat() for v in values]
    assert got == want
