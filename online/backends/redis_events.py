"""The compose profile's event log: Redis Streams in the layout of ``data_exchange_center.redis_layout``.

``append`` runs one Lua script per batch (idempotency key ``SET NX EX``, ``INCR`` of the sequence,
``XADD`` to the user's stream and to the global log) and, in the same pipeline, ``WAITAOF 1 0``: the
batch is acknowledged only when Redis says it is fsynced in its append-only file (``ONLINE_STORE_FORMAT.md``,
"Redis: the event log"). Requests read a user's events with one ``XREVRANGE`` on a client whose socket
timeout is the backend budget; writes use a second client with a longer timeout (an fsync can take
milliseconds).
"""

from __future__ import annotations

from typing import Any, cast

import redis

from data_exchange_center import redis_layout as R
from data_exchange_center.events import Event, StoredEvent
from data_exchange_center.settings import Settings
from online.backends.base import BackendError, ReadyStatus
from online.backends.event_log import AppendResult
from online.backends.redis_calls import bounded_client

POOL_SIZE = 64
WRITE_TIMEOUT_S = 5.0
WAITAOF_TIMEOUT_MS = 3000
EXPORT_BATCH = 10_000
FIELDS_PER_EVENT = 6
APPEND_SCRIPT = """
local prefix, ttl, stored = ARGV[1], ARGV[2], 0
for i = 3, #ARGV, 6 do
  local event_id, userid = ARGV[i], ARGV[i + 1]
  local id_key = prefix .. 'id:' .. event_id
  if redis.call('SET', id_key, '0', 'NX', 'EX', ttl) then
    local seq = redis.call('INCR', prefix .. 'seq')
    local entry = seq .. '-0'
    redis.call('SET', id_key, seq, 'KEEPTTL')
    redis.call('XADD', prefix .. 'u:' .. userid, entry, 'event_id', event_id, 'itemid', ARGV[i + 2],
               'rating', ARGV[i + 3], 'type', ARGV[i + 4], 'ts', ARGV[i + 5])
    redis.call('XADD', prefix .. 'log', entry, 'event_id', event_id, 'userid', userid, 'itemid', ARGV[i + 2],
               'rating', ARGV[i + 3], 'type', ARGV[i + 4], 'ts', ARGV[i + 5])
    stored = stored + 1
  end
end
return stored
"""


def _text(fields: dict[bytes, bytes], name: bytes) -> str:
    return fields[name].decode()


def decode_entry(entry_id: bytes, fields: dict[bytes, bytes], userid: int | None = None) -> StoredEvent:
    """One stream entry as a stored event (``userid`` given for a user's stream, read from ``:log``)."""
    event_type = _text(fields, R.EVENT_FIELD_TYPE) or None
    user = int(_text(fields, R.EVENT_FIELD_USER)) if userid is None else userid
    event = Event(
        event_id=_text(fields, R.EVENT_FIELD_ID),
        userid=user,
        itemid=int(_text(fields, R.EVENT_FIELD_ITEM)),
        rating=float(_text(fields, R.EVENT_FIELD_RATING)),
        type=event_type,
        timestamp=int(_text(fields, R.EVENT_FIELD_TS)),
    )
    return StoredEvent(R.event_seq_of(entry_id), event)


def script_args(events: list[Event]) -> list[str]:
    args: list[str] = []
    for e in events:
        args += [e.event_id, str(e.userid), str(e.itemid), repr(float(e.rating)), e.type or "", str(e.timestamp)]
    return args


class RedisEventLog:
    """``EventLog`` over Redis Streams."""

    name = "redis"

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        url = self.server = settings.events_redis_url or settings.redis_url  # the server this log calls
        timeout_s = settings.backend_timeout_ms / 1000
        self.prefix = R.events_prefix(settings.redis_namespace)
        self.namespace = settings.redis_namespace
        self.ttl_s = settings.event_id_ttl_s
        self.reader = client or bounded_client(url, timeout_s, POOL_SIZE)  # never retries: on the request path
        self.writer = client or redis.Redis.from_url(
            url, socket_timeout=WRITE_TIMEOUT_S, socket_connect_timeout=WRITE_TIMEOUT_S, max_connections=POOL_SIZE
        )
        self._script = self.writer.register_script(APPEND_SCRIPT)

    def append(self, events: list[Event]) -> AppendResult:
        if not events:
            return AppendResult(0, 0)
        try:
            pipe = self.writer.pipeline(transaction=False)
            self._script(args=[self.prefix, self.ttl_s, *script_args(events)], client=pipe)
            pipe.execute_command("WAITAOF", 1, 0, WAITAOF_TIMEOUT_MS)
            stored, (n_local, _) = pipe.execute()
        except redis.RedisError as exc:
            raise BackendError("events", f"Redis append failed, nothing acknowledged: {exc}") from exc
        if int(n_local) < 1:
            raise BackendError("events", f"Redis did not fsync the batch within {WAITAOF_TIMEOUT_MS} ms (WAITAOF)")
        return AppendResult(int(stored), len(events) - int(stored))

    def read_user(self, userid: int, since_seq: int, limit: int, timeout_s: float) -> list[StoredEvent]:
        key = R.event_user_stream_key(self.namespace, userid)
        start = b"(" + R.event_entry_id(since_seq)
        try:
            entries = cast(list[Any], self.reader.xrevrange(key, "+", start, count=limit))
        except redis.RedisError as exc:
            raise BackendError("events", f"Redis XREVRANGE: {exc}") from exc
        return [decode_entry(entry_id, fields, userid) for entry_id, fields in reversed(entries)]

    def read_all(self, since_seq: int = 0) -> list[StoredEvent]:
        key, out = R.event_log_stream_key(self.namespace), list[StoredEvent]()
        while True:
            start = b"(" + R.event_entry_id(since_seq)
            entries = cast(list[Any], self.writer.xrange(key, start, "+", count=EXPORT_BATCH))
            if not entries:
                return out
            out += [decode_entry(entry_id, fields) for entry_id, fields in entries]
            since_seq = out[-1].seq

    def count(self) -> int:
        return int(cast(int, self.writer.xlen(R.event_log_stream_key(self.namespace))))

    def status(self) -> ReadyStatus:
        try:
            self.reader.ping()
        except redis.RedisError as exc:
            return ReadyStatus(False, self.name, None, f"{type(exc).__name__}: {exc}")
        return ReadyStatus(True, self.name, None)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()
