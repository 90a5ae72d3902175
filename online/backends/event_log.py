"""The event log role: durable, per-user ordered storage of live feedback events.

``EventLog`` has three calls:

- ``append(events)``: store a batch, idempotent on ``event_id`` (an id already stored is skipped and
  counted as a duplicate); it returns only once the stored events are durable (fsynced), so a ``202``
  that follows it survives ``kill -9`` of the service and of the store.
- ``read_user(userid, since_seq, limit, timeout_s)``: the user's events with ``seq > since_seq`` in the
  order they were stored (the most recent ``limit`` of them).
- ``read_all(since_seq)``: every stored event after ``since_seq`` in store order (the export that the
  offline fetch stage reads).

Adapters (``EVENT_LOGS``, chosen by ``Settings.event_store``; ``auto`` follows the profile):

- ``sqlite`` (embedded): ``online.backends.sqlite_events:SqliteEventLog``, one SQLite file in WAL mode
  under the data dir with ``synchronous=FULL``: every gunicorn worker opens it, and it survives restarts;
- ``redis`` (compose): ``online.backends.redis_events:RedisEventLog``, Redis Streams in the layout of
  ``data_exchange_center.redis_layout`` (``ONLINE_STORE_FORMAT.md``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from data_exchange_center.events import Event, StoredEvent
from data_exchange_center.settings import Settings
from online.backends.base import ReadyStatus

EVENT_LOGS = {
    "sqlite": "online.backends.sqlite_events:SqliteEventLog",
    "redis": "online.backends.redis_events:RedisEventLog",
}
PROFILE_EVENT_LOG = {"embedded": "sqlite", "compose": "redis"}


@dataclass(frozen=True)
class AppendResult:
    n_stored: int  # events stored by this call
    n_duplicates: int  # events whose event_id was already stored (not stored again)


class EventLog(Protocol):
    name: str

    def append(self, events: list[Event]) -> AppendResult: ...

    def read_user(self, userid: int, since_seq: int, limit: int, timeout_s: float) -> list[StoredEvent]: ...

    def read_all(self, since_seq: int = 0) -> list[StoredEvent]: ...

    def status(self) -> ReadyStatus: ...

    def close(self) -> None: ...


def event_log_name(settings: Settings) -> str:
    return PROFILE_EVENT_LOG[settings.profile] if settings.event_store == "auto" else settings.event_store


def build_event_log(settings: Settings) -> Any:
    """The configured ``EventLog`` adapter (imported on use, so the embedded profile never imports redis)."""
    module_name, _, class_name = EVENT_LOGS[event_log_name(settings)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(settings)
