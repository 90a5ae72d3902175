"""The compose profile's user profile store: Redis, in the key layout of ``data_exchange_center.redis_layout``.

The live version (the pointer key) is re-read by the service's background thread every
``POINTER_CACHE_TTL_S``, never on a request's clock, with the version's ``vector_tower`` (meta hash). A
request reads the user's hash with one ``HGETALL`` bounded by its own budget (``redis_calls``); on an
empty reply the pointer is read once more within that budget, in case the version just switched and the
old one was deleted. The client never retries and its connection pool is made once per worker process.
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from data_exchange_center import redis_layout as R
from data_exchange_center.chain import UserState
from data_exchange_center.settings import Settings
from online.backends.base import BackendError, ReadyStatus
from online.backends.redis_calls import bounded_client, call, hgetall
from online.backends.versions import Refreshing


class RedisProfileStore:
    """``ProfileStore`` over Redis."""

    name = "redis"

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.namespace = settings.redis_namespace
        self.timeout_s = settings.backend_timeout_ms / 1000
        self.client = client or bounded_client(settings.redis_url, self.timeout_s)
        self.server = settings.redis_url  # the server this role calls (roles on one server fail together)
        self._version: str | None = None
        self._towers: dict[str, str | None] = {}  # version -> the tower that computed its vectors (meta)
        self._next_check = 0.0
        self.last_error: str | None = None

    def _read_pointer(self, timeout_s: float) -> str | None:
        raw = cast(bytes | None, call(self.client, timeout_s, "GET", R.pointer_key(self.namespace)))
        version = None if raw is None else raw.decode()
        self._version = version
        return version

    def fetch(self, userid: int, timeout_s: float) -> tuple[UserState | None, str]:
        version = self._version
        if version is None:
            raise BackendError("profile", f"no users version read yet under {self.namespace!r}: {self.last_error}")
        started = time.perf_counter()
        fields = self._hgetall(version, userid, timeout_s)
        if not fields:  # unknown user, or the version switched: read the pointer once more
            left = timeout_s - (time.perf_counter() - started)
            fresh = self._read_pointer(left) if left > 0.001 else None
            left = timeout_s - (time.perf_counter() - started)
            if fresh is not None and fresh != version and left > 0.001:
                version, fields = fresh, self._hgetall(fresh, userid, left)
        record = R.decode_user(userid, fields)
        if record is None:
            return None, version
        state = UserState(record.terms, record.vector, record.seen, record.seen_labels, record.base_event_seq,
                          record.seen_ratings, self._towers.get(version))  # fmt: skip
        return state, version

    def _hgetall(self, version: str, userid: int, timeout_s: float) -> dict[bytes, bytes]:
        return hgetall(self.client, timeout_s, R.user_key(self.namespace, version, userid))

    def maybe_refresh(self) -> None:
        """Re-read the pointer every ``POINTER_CACHE_TTL_S`` (the service's background thread)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + R.POINTER_CACHE_TTL_S
        try:
            version = self._read_pointer(max(self.timeout_s, 1.0))
            if version is not None and version not in self._towers:
                tower = call(self.client, max(self.timeout_s, 1.0), "HGET", R.meta_key(self.namespace, version),
                             R.META_VECTOR_TOWER)  # fmt: skip
                self._towers = {version: None if tower is None else cast(bytes, tower).decode()}
            self.last_error = None if self._version is not None else "no users version published yet"
        except redis.RedisError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"

    def snapshots(self) -> list[Refreshing[Any]]:
        return []  # the versions live in Redis

    def status(self) -> ReadyStatus:
        try:
            version = self._read_pointer(max(self.timeout_s, 0.5))
        except redis.RedisError as exc:
            return ReadyStatus(False, self.name, None, f"{type(exc).__name__}: {exc}")
        if version is None:
            return ReadyStatus(False, self.name, None, "no users version published yet")
        return ReadyStatus(True, self.name, version)

    def close(self) -> None:
        self.client.close()
