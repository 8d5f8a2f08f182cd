"""Contract tests: both object-store implementations behave the same."""

from __future__ import annotations

import pytest

from analytics_shared.object_store import (
    LocalObjectStore,
    NotModified,
    ObjectNotFound,
    PreconditionFailed,
    S3ObjectStore,
    StoreUnavailable,
    open_store,
)


def test_put_file_then_get_file_round_trips(store, tmp_path):
    src = tmp_path / "in.bin"
    payload = bytes(range(256)) * 4096  # 1 MiB
    src.write_bytes(payload)
    info = store.put_file("history/a.db", src)
    assert info.size == len(payload)
    dest = tmp_path / "out" / "a.db"
    got = store.get_file("history/a.db", dest)
    assert dest.read_bytes() == payload
    assert got.size == len(payload)
    assert not dest.with_name("a.db.part").exists()


def test_put_bytes_replaces_and_etag_changes(store):
    first = store.put_bytes("current/manifest.json", b'{"v": 1}')
    body, etag = store.get_bytes("current/manifest.json")
    assert body == b'{"v": 1}' and etag == first.etag
    store.put_bytes("current/manifest.json", b'{"v": 2, "more": true}')
    body2, etag2 = store.get_bytes("current/manifest.json")
    assert body2 == b'{"v": 2, "more": true}'
    assert etag2 != etag


def test_get_bytes_if_none_match_answers_not_modified(store):
    store.put_bytes("current/manifest.json", b"{}")
    _, etag = store.get_bytes("current/manifest.json")
    with pytest.raises(NotModified):
        store.get_bytes("current/manifest.json", if_none_match=etag)
    store.put_bytes("current/manifest.json", b'{"changed": 1}')
    body, _ = store.get_bytes("current/manifest.json", if_none_match=etag)
    assert body == b'{"changed": 1}'


def test_missing_keys(store, tmp_path):
    assert store.head("nope/x") is None
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope/x")
    with pytest.raises(ObjectNotFound):
        store.get_file("nope/x", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    store.delete("nope/x")  # deleting a missing key is fine


def test_head_list_delete(store):
    for key in ("history/b.db", "history/a.db", "logs/etl_sync_2026-01-01/r.json"):
        store.put_bytes(key, b"x" * 3)
    info = store.head("history/a.db")
    assert info is not None and info.size == 3
    assert [o.key for o in store.list("history/")] == ["history/a.db", "history/b.db"]
    assert len(list(store.list())) == 3
    store.delete("history/a.db")
    assert [o.key for o in store.list("history/")] == ["history/b.db"]


def test_put_bytes_if_match_is_compare_and_swap(store):
    first = store.put_bytes("current/manifest.json", b'{"v": 1}')
    second = store.put_bytes("current/manifest.json", b'{"v": 2}', if_match=first.etag)
    body, etag = store.get_bytes("current/manifest.json")
    assert body == b'{"v": 2}' and etag == second.etag
    # A writer that read version 1 loses, and the object is left as it was.
    with pytest.raises(PreconditionFailed):
        store.put_bytes("current/manifest.json", b'{"v": "stale"}', if_match=first.etag)
    assert store.get_bytes("current/manifest.json")[0] == b'{"v": 2}'
    with pytest.raises(PreconditionFailed):
        store.put_bytes("missing/manifest.json", b"{}", if_match=first.etag)
    assert store.head("missing/manifest.json") is None


def test_put_bytes_if_none_match_only_creates(store):
    store.put_bytes("current/manifest.json", b"first", if_none_match="*")
    with pytest.raises(PreconditionFailed):
        store.put_bytes("current/manifest.json", b"second", if_none_match="*")
    assert store.get_bytes("current/manifest.json")[0] == b"first"
    with pytest.raises(ValueError):
        store.put_bytes("current/manifest.json", b"x", if_none_match="some-etag")


def test_concurrent_conditional_writers_have_one_winner(store):
    """docs/architecture.md: twenty races of six writers with the same If-Match,
    each with exactly one winner, on both stores."""
    import threading

    for race in range(20):
        base = store.put_bytes("current/manifest.json", f"base-{race}".encode())
        winners: list[int] = []
        barrier = threading.Barrier(6)

        def writer(i: int, etag: str = base.etag) -> None:
            barrier.wait()
            try:
                store.put_bytes("current/manifest.json", f"w{i}".encode(), if_match=etag)
                winners.append(i)
            except PreconditionFailed:
                pass

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(winners) == 1, f"race {race}: winners {winners}"
        assert store.get_bytes("current/manifest.json")[0] == f"w{winners[0]}".encode()
    assert [o.key for o in store.list("current/")] == ["current/manifest.json"]


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../../b"])
def test_hostile_keys_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_unreachable_s3_is_store_unavailable():
    store = S3ObjectStore(
        "bucket",
        endpoint_url="http://127.0.0.1:9",
        access_key_id="a",
        secret_access_key="b",
        region="us-east-1",
        connect_timeout=0.5,
        max_attempts=1,
    )
    with pytest.raises(StoreUnavailable):
        store.get_bytes("current/manifest.json")


def test_open_store_rejects_unknown_schemes(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        open_store("ftp://host/x")
    with pytest.raises(ValueError, match="absolute"):
        open_store("file://relative/path")
    assert isinstance(open_store(tmp_path.as_uri()), LocalObjectStore)
