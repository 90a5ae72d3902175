"""Redis calls bounded by the time left in a request.

redis-py sets one socket timeout per client and, from 7.0, retries a failed command three times with
an exponential backoff of up to 10 s: a request could then wait seconds for a dead server. Here a
client never retries (the circuit breaker and the fallbacks handle failures), connects within the
backend budget, and each command runs on a pooled connection whose socket timeout is set to that
call's own budget (``min(backend budget, time left)``).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

POOL_SIZE = 64  # connections per worker process; more concurrent calls fail at once (ConnectionError)


def bounded_client(url: str, timeout_s: float, pool_size: int = POOL_SIZE) -> redis.Redis:
    """A client that never retries, connects within ``timeout_s`` and reads within ``timeout_s``."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=pool_size,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def call(client: redis.Redis, timeout_s: float, *command: Any) -> Any:
    """One command with the socket timeout ``timeout_s``; the raw reply (a list for HGETALL/HMGET).

    A connection that failed or timed out is dropped (its reply could still arrive later)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.update_current_socket_timeout(timeout_s)
        conn.send_command(*command)
        return conn.read_response()
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def hgetall(client: redis.Redis, timeout_s: float, key: bytes | str) -> dict[bytes, bytes]:
    flat = call(client, timeout_s, "HGETALL", key) or []
    return dict(zip(flat[::2], flat[1::2], strict=True))


def hmget(client: redis.Redis, timeout_s: float, key: bytes | str, fields: list[bytes]) -> list[bytes | None]:
    return list(call(client, timeout_s, "HMGET", key, *fields))
