"""Golden values of the Redis key layout and value encodings (data_exchange_center/redis_layout.py).

The bytes below are the ones written in ONLINE_STORE_FORMAT.md; a change here is a format change.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_exchange_center import redis_layout as R

pytestmark = pytest.mark.unit

NS = "recsys"
VERSION = "20240102T030405000006Z-0a1b"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (R.pointer_key(NS), b"recsys:users:current"),
        (R.versions_key(NS), b"recsys:users:versions"),
        (R.meta_key(NS, VERSION), b"recsys:users:v:20240102T030405000006Z-0a1b:meta"),
        (R.user_key(NS, VERSION, 42), b"recsys:users:v:20240102T030405000006Z-0a1b:u:42"),
        (
            R.user_key("ns-2.test", VERSION, int(np.int64(6040))),
            b"ns-2.test:users:v:20240102T030405000006Z-0a1b:u:6040",
        ),
        (R.version_match_pattern(NS, VERSION), b"recsys:users:v:20240102T030405000006Z-0a1b:*"),
    ],
)
def test_keys_are_golden(key: bytes, expected: bytes) -> None:
    assert key == expected


def test_user_keys_equal_user_key_one_by_one() -> None:
    ids = np.array([1, 20, 300], dtype=np.int64)
    assert R.user_keys(NS, VERSION, ids) == [R.user_key(NS, VERSION, int(u)) for u in ids]


@pytest.mark.parametrize("namespace", ["", "rec sys", "rec*", "a:b", "ü"])
def test_bad_namespace_is_refused(namespace: str) -> None:
    with pytest.raises(R.RedisLayoutError, match="namespace"):
        R.pointer_key(namespace)


@pytest.mark.parametrize("version", ["", "v 1", "v*", "a:b"])
def test_bad_version_is_refused(version: str) -> None:
    with pytest.raises(R.RedisLayoutError, match="version"):
        R.user_key(NS, version, 1)


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        (np.array([1.0, -2.0, 0.5], dtype=np.float32), b"\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x00\x3f"),
        (np.array([1.0], dtype=">f4"), b"\x00\x00\x80\x3f"),  # big-endian input: still little-endian bytes
        (np.array([0.1], dtype=np.float64), b"\xcd\xcc\xcc\x3d"),  # float64 input: rounded to float32
    ],
)
def test_vector_bytes_are_little_endian_float32(vector: np.ndarray, expected: bytes) -> None:
    assert R.encode_vector(vector) == expected
    decoded = R.decode_vector(expected)
    assert decoded is not None and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector.astype(np.float32))


def test_vector_must_be_one_dimensional_and_whole() -> None:
    with pytest.raises(R.RedisLayoutError, match="1-D"):
        R.encode_vector(np.zeros((2, 2)))
    with pytest.raises(R.RedisLayoutError, match="float32"):
        R.decode_vector(b"\x00\x00\x80")
    assert R.decode_vector(None) is None


def test_items_and_labels_bytes() -> None:
    items = R.encode_items([1, 258])
    assert items == b"\x01\x00\x00\x00\x00\x00\x00\x00\x02\x01\x00\x00\x00\x00\x00\x00"
    assert R.decode_items(items).tolist() == [1, 258]
    assert R.encode_labels([1, 0, 1]) == b"\x01\x00\x01"
    assert R.decode_labels(b"\x01\x00\x01").tolist() == [1, 0, 1]
    assert R.decode_items(b"").tolist() == [] and R.decode_labels(None).tolist() == []
    with pytest.raises(R.RedisLayoutError, match="int64"):
        R.decode_items(b"\x01\x02\x03")


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        (["Children's", "Sci-Fi"], b'["Children\'s","Sci-Fi"]'),
        (["Caf\u00e9"], b'["Caf\xc3\xa9"]'),
        ([], b"[]"),
    ],
)
def test_terms_are_compact_utf8_json(terms: list[str], expected: bytes) -> None:
    assert R.encode_terms(terms) == expected
    assert R.decode_terms(expected) == terms


def test_terms_must_be_an_array() -> None:
    with pytest.raises(R.RedisLayoutError, match="array"):
        R.decode_terms(b'{"a": 1}')
    assert R.decode_terms(None) == []


def test_user_hash_is_golden_and_round_trips() -> None:
    record = R.UserProfileRecord(
        userid=42,
        terms=["Comedy"],
        vector=np.array([1.0, -2.0], dtype=np.float32),
        seen=np.array([7], dtype=np.int64),
        seen_labels=np.array([1], dtype=np.int8),
    )
    fields = R.encode_user(record)
    assert fields == {
        b"terms": b'["Comedy"]',
        b"vector": b"\x00\x00\x80\x3f\x00\x00\x00\xc0",
        b"seen": b"\x07\x00\x00\x00\x00\x00\x00\x00",
        b"seen_labels": b"\x01",
    }
    decoded = R.decode_user(42, fields)
    assert decoded is not None and decoded.terms == ["Comedy"] and decoded.seen.tolist() == [7]
    assert decoded.vector is not None and decoded.vector.tolist() == [1.0, -2.0]


def test_the_base_event_seq_is_a_decimal_field_absent_when_zero() -> None:
    record = R.UserProfileRecord(userid=3, seen=np.array([7], np.int64), seen_labels=np.array([1], np.int8),
                                 base_event_seq=12345)  # fmt: skip
    fields = R.encode_user(record)
    assert fields[b"base_event_seq"] == b"12345"
    decoded = R.decode_user(3, fields)
    assert decoded is not None and decoded.base_event_seq == 12345
    plain = R.encode_user(R.UserProfileRecord(userid=3))
    assert b"base_event_seq" not in plain and R.decode_user(3, plain).base_event_seq == 0  # type: ignore[union-attr]


def test_seen_ratings_are_float32_bytes_aligned_with_seen_and_absent_in_older_versions() -> None:
    record = R.UserProfileRecord(userid=3, seen=np.array([7, 9], np.int64), seen_labels=np.array([1, 0], np.int8),
                                 seen_ratings=np.array([4.0, 2.0], np.float32))  # fmt: skip
    fields = R.encode_user(record)
    assert fields[b"seen_ratings"] == b"\x00\x00\x80\x40\x00\x00\x00\x40"
    decoded = R.decode_user(3, fields)
    assert decoded is not None and decoded.seen_ratings is not None and decoded.seen_ratings.tolist() == [4.0, 2.0]
    older = {k: v for k, v in fields.items() if k != b"seen_ratings"}
    assert R.decode_user(3, older).seen_ratings is None  # type: ignore[union-attr]
    with pytest.raises(R.RedisLayoutError, match="ratings"):
        R.decode_user(3, {**fields, b"seen_ratings": R.encode_ratings([4.0])})
    with pytest.raises(R.RedisLayoutError, match="ratings"):
        R.encode_user(dataclasses.replace(record, seen_ratings=np.array([4.0], np.float32)))


def test_user_without_vector_has_no_vector_field() -> None:
    fields = R.encode_user(R.UserProfileRecord(userid=1))
    assert fields == {b"terms": b"[]", b"seen": b"", b"seen_labels": b""}
    decoded = R.decode_user(1, fields)
    assert decoded is not None and decoded.vector is None


def test_empty_reply_is_a_missing_user_and_misaligned_labels_are_refused() -> None:
    assert R.decode_user(1, {}) is None
    with pytest.raises(R.RedisLayoutError, match="labels"):
        R.decode_user(1, {b"seen": R.encode_items([1, 2]), b"seen_labels": b"\x01"})
    with pytest.raises(R.RedisLayoutError, match="labels"):
        R.encode_user(R.UserProfileRecord(userid=1, seen=np.array([1]), seen_labels=np.array([], dtype=np.int8)))


def test_meta_hash_is_golden() -> None:
    meta = R.encode_meta(n_users=6040, vector_dim=32, created_at="2024-01-02T03:04:05Z", state=R.STATE_COMPLETE)
    assert meta == {
        b"format_version": b"1",
        b"n_users": b"6040",
        b"vector_dim": b"32",
        b"created_at": b"2024-01-02T03:04:05Z",
        b"state": b"complete",
    }
    with_tower = R.encode_meta(1, 2, "2024-01-02T03:04:05Z", R.STATE_WRITING, vector_tower="ab" * 32)
    assert with_tower[b"vector_tower"] == b"ab" * 32 and len(with_tower) == 6


def test_the_golden_example_of_online_store_format_md() -> None:
    record = R.UserProfileRecord(
        userid=42,
        terms=["Comedy", "Drama"],
        vector=np.array([0.5, -1.0, 2.0], dtype=np.float32),
        seen=np.array([1193, 661], dtype=np.int64),
        seen_labels=np.array([1, 0], dtype=np.int8),
    )
    assert R.user_key("recsys", "20261125T131950123456Z-3f9a", 42) == b"recsys:users:v:20261125T131950123456Z-3f9a:u:42"
    fields = {k: v.hex(" ") for k, v in R.encode_user(record).items()}
    assert fields == {
        b"terms": "5b 22 43 6f 6d 65 64 79 22 2c 22 44 72 61 6d 61 22 5d",
        b"vector": "00 00 00 3f 00 00 80 bf 00 00 00 40",
        b"seen": "a9 04 00 00 00 00 00 00 95 02 00 00 00 00 00 00",
        b"seen_labels": "01 00",
    }
