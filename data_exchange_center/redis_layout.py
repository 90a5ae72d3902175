"""Redis key layout and value encodings of the published user profiles.

The written specification is ``ONLINE_STORE_FORMAT.md`` beside this module; this module is its code.
The publisher (``offline_to_online/recall/s1_user_to_redis``) and the online Redis profile store both
call these pure functions, so they cannot disagree on a key or a byte.

Keys (``ns`` = ``Settings.redis_namespace``, ``ver`` = a version id, see ``online_layout.new_version``)::

    {ns}:users:current                  string  the live version id (the pointer a reader follows)
    {ns}:users:versions                 set     every version a publisher started (for clean-up)
    {ns}:users:v:{ver}:meta             hash    format, n_users, vector_dim, state, created_at, vector_tower
    {ns}:users:v:{ver}:u:{userid}       hash    terms, vector, seen, seen_labels, seen_ratings, base_event_seq
                                                (one read)

Values: ``terms`` is a compact UTF-8 JSON array of strings, ``vector`` little-endian float32 bytes,
``seen`` little-endian int64 bytes (the user's offline items in time order), ``seen_labels`` int8
bytes aligned with ``seen``, ``seen_ratings`` little-endian float32 bytes aligned with ``seen`` (the
ranker's history features of a user with live events; versions published without it have none, and
their users' history features do not follow events), ``base_event_seq`` the ASCII decimal store
sequence number of the newest event-log rating among ``seen`` (the service applies the user's events
after it). A user without a vector has no ``vector`` field, one without events in the base no
``base_event_seq`` (0). The meta's ``vector_tower`` is the hex SHA-256 of the user tower that computed
the version's vectors from the published ``seen``/``seen_labels`` (absent: not known).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

FORMAT_VERSION = 1
USERS = "users"
VECTOR_DTYPE = np.dtype("<f4")
SEEN_DTYPE = np.dtype("<i8")
LABEL_DTYPE = np.dtype("i1")
RATING_DTYPE = np.dtype("<f4")

FIELD_TERMS = b"terms"
FIELD_VECTOR = b"vector"
FIELD_SEEN = b"seen"
FIELD_SEEN_LABELS = b"seen_labels"
FIELD_BASE_EVENT_SEQ = b"base_event_seq"
FIELD_SEEN_RATINGS = b"seen_ratings"
USER_FIELDS = (FIELD_TERMS, FIELD_VECTOR, FIELD_SEEN, FIELD_SEEN_LABELS)

META_FORMAT = b"format_version"
META_N_USERS = b"n_users"
META_VECTOR_DIM = b"vector_dim"
META_STATE = b"state"
META_CREATED_AT = b"created_at"
META_VECTOR_TOWER = b"vector_tower"
STATE_WRITING = b"writing"
STATE_COMPLETE = b"complete"

POINTER_CACHE_TTL_S = 5.0  # a reader may cache the pointer this long; on a miss it re-reads it once

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_GLOB_SPECIAL = re.compile(rb"([*?\[\]\\])")


class RedisLayoutError(ValueError):
    """A namespace, version or value does not fit the layout."""


# --- keys -------------------------------------------------------------------------------------------
def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.match(namespace):
        raise RedisLayoutError(f"Redis namespace {namespace!r} must match {_NAMESPACE_RE.pattern}")
    return namespace


def _check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise RedisLayoutError(f"version {version!r} must match {_VERSION_RE.pattern}")
    return version


def pointer_key(namespace: str) -> bytes:
    """The key holding the live version id."""
    return f"{_check_namespace(namespace)}:{USERS}:current".encode()


def versions_key(namespace: str) -> bytes:
    """The set of every version a publisher started (complete or not), for clean-up."""
    return f"{_check_namespace(namespace)}:{USERS}:versions".encode()


def version_prefix(namespace: str, version: str) -> bytes:
    """The prefix shared by every key of one version."""
    return f"{_check_namespace(namespace)}:{USERS}:v:{_check_version(version)}:".encode()


def meta_key(namespace: str, version: str) -> bytes:
    return version_prefix(namespace, version) + b"meta"


def user_key(namespace: str, version: str, userid: int) -> bytes:
    """The hash of one user; ``userid`` in decimal ASCII."""
    return version_prefix(namespace, version) + b"u:" + str(int(userid)).encode()


def user_keys(namespace: str, version: str, userids: Iterable[int]) -> list[bytes]:
    prefix = version_prefix(namespace, version) + b"u:"
    return [prefix + str(int(u)).encode() for u in userids]


def version_match_pattern(namespace: str, version: str) -> bytes:
    """A SCAN MATCH pattern for every key of one version (glob characters escaped)."""
    return _GLOB_SPECIAL.sub(rb"\\\1", version_prefix(namespace, version)) + b"*"


# --- values -----------------------------------------------------------------------------------------
def encode_terms(terms: Iterable[str]) -> bytes:
    """``["Comedy", "Drama"]`` -> ``b'["Comedy","Drama"]'`` (compact JSON, UTF-8, order kept)."""
    return json.dumps([str(t) for t in terms], ensure_ascii=False, separators=(",", ":")).encode()


def decode_terms(raw: bytes | None) -> list[str]:
    if not raw:
        return []
    terms = json.loads(raw.decode())
    if not isinstance(terms, list):
        raise RedisLayoutError(f"terms value {raw[:40]!r} is not a JSON array")
    return [str(t) for t in terms]


def encode_vector(vector: np.ndarray) -> bytes:
    """A 1-D vector as little-endian float32 bytes (4 bytes per dimension)."""
    array = np.asarray(vector)
    if array.ndim != 1:
        raise RedisLayoutError(f"a user vector must be 1-D, got shape {array.shape}")
    return array.astype(VECTOR_DTYPE, copy=False).tobytes()


def _from_bytes(raw: bytes, stored: np.dtype, native: type, field: str) -> np.ndarray:
    """A field's packed array (``stored`` dtype) as ``native``; refuses a length that is not whole items."""
    if len(raw) % stored.itemsize:
        raise RedisLayoutError(f"{field} value of {len(raw)} bytes is not a whole number of {np.dtype(native).name}")
    return np.frombuffer(raw, dtype=stored).astype(native)


def decode_vector(raw: bytes | None) -> np.ndarray | None:
    """float32 (dim,) in native byte order, or None when the user has no vector."""
    return None if raw is None else _from_bytes(raw, VECTOR_DTYPE, np.float32, "vector")


def encode_items(items: Iterable[int] | np.ndarray) -> bytes:
    return np.asarray(items, dtype=np.int64).astype(SEEN_DTYPE, copy=False).tobytes()


def decode_items(raw: bytes | None) -> np.ndarray:
    return _from_bytes(raw, SEEN_DTYPE, np.int64, "seen") if raw else np.zeros(0, dtype=np.int64)


def encode_labels(labels: Iterable[int] | np.ndarray) -> bytes:
    return np.asarray(labels, dtype=LABEL_DTYPE).tobytes()


def decode_labels(raw: bytes | None) -> np.ndarray:
    if not raw:
        return np.zeros(0, dtype=np.int8)
    return np.frombuffer(raw, dtype=LABEL_DTYPE).astype(np.int8)


def encode_ratings(ratings: Iterable[float] | np.ndarray) -> bytes:
    return np.asarray(ratings, dtype=RATING_DTYPE).tobytes()


def decode_ratings(raw: bytes | None) -> np.ndarray | None:
    """None when the field is absent (a version published without ratings)."""
    return None if raw is None else _from_bytes(raw, RATING_DTYPE, np.float32, "seen_ratings")


# --- one user ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserProfileRecord:
    """What the online side reads for one user: recall terms, vector and the seen-item filter."""

    userid: int
    terms: list[str] = field(default_factory=list)
    vector: np.ndarray | None = None  # float32 (dim,)
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64 (n_seen,)
    seen_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))  # int8 (n_seen,)
    seen_ratings: np.ndarray | None = None  # float32 (n_seen,); None: not published
    base_event_seq: int = 0  # the newest event-log rating in ``seen`` (0: none); later events apply online


def encode_user(record: UserProfileRecord) -> dict[bytes, bytes]:
    """The hash fields of one user (no ``vector`` field when the user has none)."""
    if len(record.seen) != len(record.seen_labels):
        raise RedisLayoutError(
            f"user {record.userid}: {len(record.seen)} seen items but {len(record.seen_labels)} labels"
        )
    if record.seen_ratings is not None and len(record.seen_ratings) != len(record.seen):
        raise RedisLayoutError(
            f"user {record.userid}: {len(record.seen)} seen items but {len(record.seen_ratings)} ratings"
        )
    fields = {
        FIELD_TERMS: encode_terms(record.terms),
        FIELD_SEEN: encode_items(record.seen),
        FIELD_SEEN_LABELS: encode_labels(record.seen_labels),
    }
    if record.seen_ratings is not None:
        fields[FIELD_SEEN_RATINGS] = encode_ratings(record.seen_ratings)
    if record.vector is not None:
        fields[FIELD_VECTOR] = encode_vector(record.vector)
    if record.base_event_seq:
        fields[FIELD_BASE_EVENT_SEQ] = str(int(record.base_event_seq)).encode()
    return fields


def decode_user(userid: int, fields: Mapping[bytes, bytes]) -> UserProfileRecord | None:
    """The record from an HGETALL reply; None for an empty reply (the user is not in this version)."""
    if not fields:
        return None
    seen = decode_items(fields.get(FIELD_SEEN))
    labels = decode_labels(fields.get(FIELD_SEEN_LABELS))
    if len(labels) != len(seen):
        raise RedisLayoutError(f"user {userid}: {len(seen)} seen items but {len(labels)} labels")
    ratings = decode_ratings(fields.get(FIELD_SEEN_RATINGS))
    if ratings is not None and len(ratings) != len(seen):
        raise RedisLayoutError(f"user {userid}: {len(seen)} seen items but {len(ratings)} ratings")
    return UserProfileRecord(
        userid=int(userid),
        terms=decode_terms(fields.get(FIELD_TERMS)),
        vector=decode_vector(fields.get(FIELD_VECTOR)),
        seen=seen,
        seen_labels=labels,
        seen_ratings=ratings,
        base_event_seq=int(fields.get(FIELD_BASE_EVENT_SEQ) or 0),
    )


def encode_meta(
    n_users: int, vector_dim: int, created_at: str, state: bytes, vector_tower: str | None = None
) -> dict[bytes, bytes]:
    meta = {
        META_FORMAT: str(FORMAT_VERSION).encode(),
        META_N_USERS: str(int(n_users)).encode(),
        META_VECTOR_DIM: str(int(vector_dim)).encode(),
        META_CREATED_AT: created_at.encode(),
        META_STATE: state,
    }
    if vector_tower is not None:
        meta[META_VECTOR_TOWER] = vector_tower.encode()
    return meta


# --- the event log (POST /ml/events) ----------------------------------------------------------------
# Keys (written in ONLINE_STORE_FORMAT.md, "Redis: the event log")::
#
#     {ns}:events:seq                 string  the last sequence number given to an event (INCR)
#     {ns}:events:u:{userid}          stream  one user's events, entry id "{seq}-0", store order
#     {ns}:events:log                 stream  every event, entry id "{seq}-0" (the export for offline)
#     {ns}:events:id:{event_id}       string  the event's seq; SET NX EX event_id_ttl_s (idempotency)
EVENTS = "events"
EVENT_FIELD_ID = b"event_id"
EVENT_FIELD_USER = b"userid"
EVENT_FIELD_ITEM = b"itemid"
EVENT_FIELD_RATING = b"rating"
EVENT_FIELD_TYPE = b"type"  # empty for an explicit rating
EVENT_FIELD_TS = b"ts"


def events_prefix(namespace: str) -> str:
    return f"{_check_namespace(namespace)}:{EVENTS}:"


def event_seq_key(namespace: str) -> bytes:
    return (events_prefix(namespace) + "seq").encode()


def event_user_stream_key(namespace: str, userid: int) -> bytes:
    return (events_prefix(namespace) + "u:" + str(int(userid))).encode()


def event_log_stream_key(namespace: str) -> bytes:
    return (events_prefix(namespace) + "log").encode()


def event_id_key(namespace: str, event_id: str) -> bytes:
    return (events_prefix(namespace) + "id:" + event_id).encode()


def event_entry_id(seq: int) -> bytes:
    """The stream entry id of the event with sequence number ``seq`` (the same in both streams)."""
    return f"{int(seq)}-0".encode()


def event_seq_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])
