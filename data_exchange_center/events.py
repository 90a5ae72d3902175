"""Live feedback events: the record ``POST /ml/events`` stores, and how events change a user's state.

An event is one interaction of a user with an item::

    {"userid": 7, "itemid": 1193, "rating": 4.0, "timestamp": 978300760, "event_id": "a1b2"}
    {"userid": 7, "itemid": 1193, "type": "like", "timestamp": 978300760, "event_id": "a1b3"}

It carries either an explicit ``rating`` (0.5 .. 5) or a ``type`` from ``EVENT_TYPES``; the implicit
label is the offline one (rating > 3 is positive), and a typed event stands for the rating in
``TYPE_RATINGS`` (so the offline fetch stage can take the event log as ratings with the same label).

The event log keeps events per user in the order they were stored (``seq``, increasing per store).
The online state of a user is the published base (``chain.UserState``) with the user's events since
that base applied by ``apply_events`` (the seen filter and the item-to-item triggers); the offline
streaming evaluation applies the same function, so served and evaluated lists agree.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.chain import UserState

EVENT_TYPES = ("like", "watch", "dislike")
TYPE_RATINGS = {"like": 5.0, "watch": 3.0, "dislike": 1.0}  # the rating a typed event stands for
MIN_RATING, MAX_RATING = 0.5, 5.0
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
MAX_ID = 2**63 - 1
# the event log as a table (the export that offline/preprocess/fetch.py --events reads)
EVENT_ID = "event_id"
EVENT_TYPE = "type"
EVENT_SEQ = "seq"
EVENT_COLUMNS = (EVENT_SEQ, EVENT_ID, S.USER_ID, S.ITEM_ID, S.RATING, EVENT_TYPE, S.TIMESTAMP)


@dataclass(frozen=True)
class Event:
    """One interaction; ``rating`` is the explicit rating or the one the ``type`` stands for."""

    event_id: str
    userid: int
    itemid: int
    rating: float
    type: str | None  # None for an explicit rating
    timestamp: int  # seconds since the epoch (the time the interaction happened, client side)

    @property
    def label(self) -> int:
        return int(self.rating > S.POSITIVE_RATING_THRESHOLD)


@dataclass(frozen=True)
class StoredEvent:
    """An event as the log returns it: with its store sequence number (increasing per store)."""

    seq: int
    event: Event


def rating_of(rating: float | None, event_type: str | None) -> float:
    """The rating an event stands for: the explicit one, else the type's."""
    if rating is not None:
        return float(rating)
    if event_type is None or event_type not in TYPE_RATINGS:
        raise ValueError(f"an event needs a rating or a type in {EVENT_TYPES}")
    return TYPE_RATINGS[event_type]


def apply_events(
    base: UserState, items: np.ndarray, labels: np.ndarray, ratings: np.ndarray | None = None
) -> UserState:
    """The user's state after ``items`` (time order) with ``labels`` and ``ratings``: appended to the seen
    items, their labels and (where the base has them) their ratings; an item seen again moves to its
    latest position with its latest rating (so it counts once, as a trigger and in the history features)."""
    if len(items) == 0:
        return base
    all_items = np.concatenate([base.seen, np.asarray(items, dtype=np.int64)])
    all_labels = np.concatenate([base.seen_labels, np.asarray(labels, dtype=np.int8)])
    keep = last_occurrences(all_items)
    all_ratings = None
    if base.seen_ratings is not None and ratings is not None:
        all_ratings = np.concatenate([base.seen_ratings, np.asarray(ratings, dtype=np.float32)])[keep]
    return dataclasses.replace(
        base, seen=all_items[keep], seen_labels=all_labels[keep], seen_ratings=all_ratings, vector_tower=None
    )  # the published vector is of the history before the events


def recent_terms(
    seen: np.ndarray, seen_labels: np.ndarray, genres_of: Callable[[np.ndarray], list[list[str]]]
) -> list[str]:
    """The user's genre terms from the recent window of the seen items (time order): the genres of at
    least ``TERM_MIN_CLICKS`` liked items among the last ``PIT_WINDOW``, sorted. The offline profile
    (``offline/preprocess/pit_features.online_user_profiles``) gives the same terms for the same items;
    ``genres_of(items)`` is each item's genres ([] when unknown)."""
    window = np.asarray(seen, dtype=np.int64)[-S.PIT_WINDOW :]
    labels = np.asarray(seen_labels)[len(seen_labels) - len(window) :]
    clicks = Counter(g for genres, label in zip(genres_of(window), labels.tolist(), strict=True) if label > 0
                     for g in set(genres))  # fmt: skip
    return sorted(g for g, n in clicks.items() if n >= S.TERM_MIN_CLICKS)


def last_occurrences(items: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct item, in position order."""
    reversed_items = items[::-1]
    _, first_in_reversed = np.unique(reversed_items, return_index=True)
    return np.sort(len(items) - 1 - first_in_reversed)


def events_state(base: UserState, events: Sequence[Event]) -> UserState:
    """``apply_events`` over event records."""
    items = np.fromiter((e.itemid for e in events), dtype=np.int64, count=len(events))
    labels = np.fromiter((e.label for e in events), dtype=np.int8, count=len(events))
    ratings = np.fromiter((e.rating for e in events), dtype=np.float32, count=len(events))
    return apply_events(base, items, labels, ratings)


def events_frame(events: Sequence[StoredEvent]) -> pd.DataFrame:
    """Stored events as a table with ``EVENT_COLUMNS`` (the event log export)."""
    return pd.DataFrame(
        {
            EVENT_SEQ: np.array([s.seq for s in events], dtype=np.int64),
            EVENT_ID: [s.event.event_id for s in events],
            S.USER_ID: np.array([s.event.userid for s in events], dtype=np.int64),
            S.ITEM_ID: np.array([s.event.itemid for s in events], dtype=np.int64),
            S.RATING: np.array([s.event.rating for s in events], dtype=np.float32),
            EVENT_TYPE: [s.event.type for s in events],
            S.TIMESTAMP: np.array([s.event.timestamp for s in events], dtype=np.int64),
        },
        columns=list(EVENT_COLUMNS),
    )


# --- the event log as a table (the export the offline fetch stage reads) ------------------------------
SQLITE_TABLE = "events"
SQLITE_COLUMNS = ("seq", "event_id", "userid", "itemid", "rating", "type", "ts")  # the embedded log's columns
REDIS_EXPORT_BATCH = 10_000


def read_event_log(source: str, default_namespace: str = "recsys") -> pd.DataFrame:
    """Every stored event in store order as a table with ``EVENT_COLUMNS``.

    ``source`` is a Parquet or CSV export (``events_frame``), the embedded log's SQLite file, or the
    compose log's Redis URL (``redis://host:port/db``, the namespace after ``#``, default ``recsys``).
    """
    if source.startswith(("redis://", "rediss://", "unix://")):
        url, _, namespace = source.partition("#")
        return _read_redis_log(url, namespace or default_namespace)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"event log {path} does not exist")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            rows = connection.execute(
                f"SELECT {', '.join(SQLITE_COLUMNS)} FROM {SQLITE_TABLE} ORDER BY seq"  # noqa: S608 -- constants
            ).fetchall()
        frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"event log {source} lacks the columns {missing} (expected {list(EVENT_COLUMNS)})")
    return frame[list(EVENT_COLUMNS)].sort_values(EVENT_SEQ, kind="stable").reset_index(drop=True)


def _read_redis_log(url: str, namespace: str) -> pd.DataFrame:
    import redis

    from data_exchange_center import redis_layout as R

    client = redis.Redis.from_url(url)
    key, rows, since = R.event_log_stream_key(namespace), [], 0
    while True:
        entries = cast(list[Any], client.xrange(key, b"(" + R.event_entry_id(since), "+", count=REDIS_EXPORT_BATCH))
        if not entries:
            break
        for entry_id, fields in entries:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            since = R.event_seq_of(entry_id)
            rows.append((since, text["event_id"], int(text["userid"]), int(text["itemid"]), float(text["rating"]),
                         text["type"] or None, int(text["ts"])))  # fmt: skip
    client.close()
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
