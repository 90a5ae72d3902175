"""The compose profile's user profile store: Redis, in the key layout of ``data_exchange_center.redis_layout``.

A request reads the live version from the pointer key (cached ``POINTER_CACHE_TTL_S``; on an empty
reply the pointer is read once more, in case the version just switched and the old one was deleted)
and then the user's hash with one ``HGETALL``. Every call carries the request's time budget as socket
timeout; the client's connection pool is thread-safe and made once per worker process.
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from data_exchange_center import redis_layout as R
from data_exchange_center.chain import UserState
from data_exchange_center.settings import Settings
from online.backends.base import BackendError, ReadyStatus
from online.backends.versions import Refreshing

POOL_SIZE = 64


class RedisProfileStore:
    """``ProfileStore`` over Redis."""

    name = "redis"

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.namespace = settings.redis_namespace
        timeout_s = settings.backend_timeout_ms / 1000
        self.client = client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=POOL_SIZE
        )
        self._pointer: tuple[str | None, float] = (None, 0.0)  # (version, read at)

    def _read_pointer(self) -> str | None:
        raw = cast(bytes | None, self.client.get(R.pointer_key(self.namespace)))
        version = None if raw is None else raw.decode()
        self._pointer = (version, time.monotonic())
        return version

    def version(self, max_age_s: float = R.POINTER_CACHE_TTL_S) -> str | None:
        version, read_at = self._pointer
        if version is None or time.monotonic() - read_at > max_age_s:
            return self._read_pointer()
        return version

    def fetch(self, userid: int, timeout_s: float) -> tuple[UserState | None, str]:
        version = self.version()
        if version is None:
            raise BackendError("profile", f"no users version published under {self.namespace!r}")
        fields = self._hgetall(version, userid, timeout_s)
        if not fields:  # unknown user, or the version switched: read the pointer once more
            fresh = self._read_pointer()
            if fresh is not None and fresh != version:
                version, fields = fresh, self._hgetall(fresh, userid, timeout_s)
        record = R.decode_user(userid, fields)
        if record is None:
            return None, version
        return UserState(record.terms, record.vector, record.seen, record.seen_labels), version

    def _hgetall(self, version: str, userid: int, timeout_s: float) -> dict[bytes, bytes]:
        """One HGETALL; the socket timeout is the backend budget set on the client (redis-py has no
        per-call timeout), the breaker stops calls while Redis is down."""
        key = R.user_key(self.namespace, version, userid)
        return cast(dict[bytes, bytes], self.client.hgetall(key))  # type: ignore[arg-type]

    def maybe_refresh(self) -> None:
        pass  # the pointer is re-read by requests at most every POINTER_CACHE_TTL_S

    def snapshots(self) -> list[Refreshing[Any]]:
        return []  # the versions live in Redis

    def status(self) -> ReadyStatus:
        try:
            self.client.ping()
            version = self._read_pointer()
        except redis.RedisError as exc:
            return ReadyStatus(False, self.name, None, f"{type(exc).__name__}: {exc}")
        if version is None:
            return ReadyStatus(False, self.name, None, "no users version published yet")
        return ReadyStatus(True, self.name, version)

    def close(self) -> None:
        self.client.close()
