"""Publish the user recall profiles to Redis: versioned, atomic, verified.

1. register the new version in ``{ns}:users:versions`` and mark its meta hash ``writing``;
2. write one hash per user with pipelined HSETs (batches, progress bar);
3. mark the meta ``complete``, then read every key's existence and a sample of users back;
4. switch ``{ns}:users:current`` to the new version (one SET): readers move over at once;
5. delete the keys of every other version but the previous one with SCAN + UNLINK in batches (also
   what an interrupted run left). The previous version stays: a reader that cached the pointer a
   moment ago still finds its users, and ``offline_to_online/s4_rollback.py`` can switch back to it.

A run killed at any point leaves the pointer on the previous version, whose keys nothing touched;
the next run writes a fresh version and removes the leftovers in step 5.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import numpy as np
import redis
from tqdm import tqdm

from data_exchange_center import redis_layout as R
from data_exchange_center.online_layout import new_version
from offline_to_online.common import BackendUnavailable, PublishVerificationError, redact_url, retry_startup
from offline_to_online.recall.user_source import UserSource

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
N_VERIFY_SAMPLE = 200
SCAN_COUNT = 1000
REDIS_HINT = "check that Redis runs there (make up SERVICES=redis) and RECSYS_REDIS_URL"


@dataclass
class RedisPublishReport:
    version: str
    previous: str | None
    n_users: int
    n_verified: int
    deleted: dict[str, int] = field(default_factory=dict)


def connect_redis(url: str, timeout_s: float = 5.0, attempts: int = 5) -> redis.Redis:
    """A client that answered PING, after a bounded retry with backoff."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def ping() -> redis.Redis:
        client.ping()
        return client

    return retry_startup(
        ping,
        backend="Redis",
        address=redact_url(url),
        hint=REDIS_HINT,
        errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
        attempts=attempts,
    )


def publish_users_to_redis(
    client: redis.Redis,
    source: UserSource,
    namespace: str,
    *,
    version: str | None = None,
    batch_size: int = BATCH_SIZE,
    n_verify: int = N_VERIFY_SAMPLE,
    progress: bool = True,
) -> RedisPublishReport:
    """Publish ``source`` as a new version and switch readers to it (see the module docstring)."""
    version = version or new_version()
    try:
        previous = current_version(client, namespace)
        client.sadd(R.versions_key(namespace), version)
        write_meta(client, namespace, version, source, R.STATE_WRITING)
        write_users(client, source, namespace, version, batch_size, progress)
        write_meta(client, namespace, version, source, R.STATE_COMPLETE)
        n_verified = verify_users(client, source, namespace, version, n_verify)
        client.set(R.pointer_key(namespace), version)
        deleted = delete_versions(client, namespace, keep={version, previous} - {None})  # type: ignore[arg-type]
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BackendUnavailable(
            "Redis", _address(client), exc, "the publish stopped; the previous version still serves; re-run it"
        ) from None
    log.info(
        "Redis: users version %s live (was %s): %d users, %d read back", version, previous, source.n_users, n_verified
    )
    return RedisPublishReport(version, previous, source.n_users, n_verified, deleted)


def current_version(client: redis.Redis, namespace: str) -> str | None:
    raw = cast(bytes | None, client.get(R.pointer_key(namespace)))
    return None if raw is None else raw.decode()


def write_meta(client: redis.Redis, namespace: str, version: str, source: UserSource, state: bytes) -> None:
    created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = R.encode_meta(source.n_users, source.vector_dim, created_at, state, source.vector_tower)
    client.hset(R.meta_key(namespace, version), mapping=meta)  # type: ignore[arg-type]


def write_users(
    client: redis.Redis, source: UserSource, namespace: str, version: str, batch_size: int, progress: bool
) -> None:
    """One HSET per user, ``batch_size`` users per pipelined round trip."""
    keys = R.user_keys(namespace, version, source.userids)
    with tqdm(total=source.n_users, desc="redis users", unit="user", disable=not progress) as bar:
        for start in range(0, source.n_users, batch_size):
            pipe = client.pipeline(transaction=False)
            stop = min(start + batch_size, source.n_users)
            for position in range(start, stop):
                pipe.hset(keys[position], mapping=R.encode_user(source.record(position)))  # type: ignore[arg-type]
            pipe.execute()
            bar.update(stop - start)


def verify_users(client: redis.Redis, source: UserSource, namespace: str, version: str, n_sample: int) -> int:
    """Every user key exists, and a sample of users decodes equal to the source; returns the sample size."""
    keys = R.user_keys(namespace, version, source.userids)
    n_found = sum(cast(int, client.exists(*keys[i : i + 1000])) for i in range(0, len(keys), 1000))
    if n_found != source.n_users:
        raise PublishVerificationError(f"Redis version {version}: {n_found} of {source.n_users} user keys exist")
    sample = sample_positions(source.n_users, n_sample)
    pipe = client.pipeline(transaction=False)
    for position in sample:
        pipe.hgetall(keys[position])
    for position, fields in zip(sample, pipe.execute(), strict=True):
        expected = source.record(int(position))
        problem = compare_records(expected, R.decode_user(expected.userid, fields))
        if problem:
            raise PublishVerificationError(f"Redis version {version}, user {expected.userid}: {problem}")
    return len(sample)


def sample_positions(n: int, n_sample: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of positions that always includes the first and the last."""
    if n <= n_sample:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=max(n_sample - 2, 0), replace=False)
    return np.unique(np.concatenate([[0, n - 1], picked]))


def compare_records(expected: R.UserProfileRecord, actual: R.UserProfileRecord | None) -> str | None:
    """None when equal, else what differs (vectors compared bit for bit)."""
    if actual is None:
        return "missing"
    if actual.terms != expected.terms:
        return f"terms {actual.terms} != {expected.terms}"
    if (actual.vector is None) != (expected.vector is None):
        return "vector present in one and not the other"
    both = expected.vector is not None and actual.vector is not None
    if both and actual.vector.tobytes() != np.asarray(expected.vector, np.float32).tobytes():  # type: ignore[union-attr]
        return "vector bytes differ"
    if not np.array_equal(actual.seen, expected.seen):
        return "seen items differ"
    if not np.array_equal(actual.seen_labels, expected.seen_labels):
        return "seen labels differ"
    ratings = [r.tolist() if r is not None else None for r in (actual.seen_ratings, expected.seen_ratings)]
    if ratings[0] != ratings[1]:
        return "seen ratings differ"
    if actual.base_event_seq != expected.base_event_seq:
        return f"base_event_seq {actual.base_event_seq} != {expected.base_event_seq}"
    return None


def delete_versions(
    client: redis.Redis, namespace: str, keep: set[str], scan_count: int = SCAN_COUNT
) -> dict[str, int]:
    """UNLINK every key of every registered version not in ``keep``; returns keys deleted per version."""
    deleted: dict[str, int] = {}
    for raw in cast(set[bytes], client.smembers(R.versions_key(namespace))):
        version = raw.decode()
        if version in keep:
            continue
        deleted[version] = unlink_matching(client, R.version_match_pattern(namespace, version), scan_count)
        client.srem(R.versions_key(namespace), version)
        log.info("Redis: deleted users version %s (%d keys)", version, deleted[version])
    return deleted


def unlink_matching(client: redis.Redis, pattern: bytes, scan_count: int) -> int:
    n_deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=scan_count):
        batch.append(key)
        if len(batch) >= scan_count:
            n_deleted += cast(int, client.unlink(*batch))
            batch = []
    if batch:
        n_deleted += cast(int, client.unlink(*batch))
    return n_deleted


def read_live_user(client: redis.Redis, namespace: str, userid: int) -> R.UserProfileRecord | None:
    """Reference reader: follow the pointer, then one HGETALL (what the online store does, minus caching)."""
    version = current_version(client, namespace)
    if version is None:
        return None
    fields = cast(dict[bytes, bytes], client.hgetall(R.user_key(namespace, version, userid)))  # type: ignore[arg-type]
    return R.decode_user(userid, fields)


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
