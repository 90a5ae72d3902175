"""The request body of ``POST /ml/events``, checked field by field like ``POST /ml/rec``'s.

One event or a JSON array of events (at most ``Settings.max_events_per_request``)::

    {"userid": 7, "itemid": 1193, "rating": 4.5, "timestamp": 978300760, "event_id": "c0ffee-1"}
    {"userid": 7, "itemid": 1193, "type": "like", "timestamp": 978300760, "event_id": "c0ffee-2"}

``userid``/``itemid``: integers 0 .. 2^63-1; ``rating``: a number 0.5 .. 5, or ``type``: one of
``like``/``watch``/``dislike`` (exactly one of the two); ``timestamp``: integer seconds since the
epoch (0 .. 2^40); ``event_id``: 1-128 characters of letters, digits and ``_.:-`` (the idempotency
key: the same id is stored once). Unknown fields are refused. A batch is all or nothing: one bad event
refuses the whole batch with its position in the message.
"""

from __future__ import annotations

import json
import math
from typing import Any

from data_exchange_center.events import (
    EVENT_ID_RE,
    EVENT_TYPES,
    MAX_ID,
    MAX_RATING,
    MIN_RATING,
    Event,
    rating_of,
)
from online.service.errors import InvalidBody, InvalidField, MissingField, UnknownField
from online.service.validation import _decode, _integer, _kind

REQUIRED = ("userid", "itemid", "timestamp", "event_id")
FIELDS = (*REQUIRED, "rating", "type")
MAX_TIMESTAMP = 2**40
EXAMPLE = '{"userid": 1, "itemid": 1193, "rating": 5, "timestamp": 978300760, "event_id": "e1"}'


def parse_events(raw: bytes, max_events: int) -> list[Event]:
    body = _decode(raw)
    items = body if isinstance(body, list) else [body]
    if not items:
        raise InvalidBody("the batch is empty: send one event object or a non-empty array of them")
    if len(items) > max_events:
        raise InvalidBody(f"a batch holds at most {max_events} events, got {len(items)}: split it")
    events = []
    for position, item in enumerate(items):
        where = "" if not isinstance(body, list) else f"event {position}: "
        try:
            events.append(parse_event(item))
        except (InvalidBody, InvalidField, MissingField, UnknownField) as exc:
            raise type(exc)(where + exc.message) from None
    return events


def parse_event(body: Any) -> Event:
    if not isinstance(body, dict):
        raise InvalidBody(f"an event must be a JSON object like {EXAMPLE}, got a JSON {_kind(body)}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise UnknownField(f"unknown field(s) {unknown}; allowed: {list(FIELDS)}")
    missing = [name for name in REQUIRED if name not in body]
    if missing:
        raise MissingField(f"the field(s) {missing} are required")
    has_rating, has_type = body.get("rating") is not None, body.get("type") is not None
    if has_rating == has_type:
        raise MissingField(
            f"give exactly one of 'rating' (a number {MIN_RATING}..{MAX_RATING}) or 'type' {EVENT_TYPES}"
        )
    rating = _rating(body["rating"]) if has_rating else None
    event_type = _type(body["type"]) if has_type else None
    return Event(
        event_id=_event_id(body["event_id"]),
        userid=_integer(body["userid"], "userid", 0, MAX_ID),
        itemid=_integer(body["itemid"], "itemid", 0, MAX_ID),
        rating=rating_of(rating, event_type),
        type=event_type,
        timestamp=_integer(body["timestamp"], "timestamp", 0, MAX_TIMESTAMP),
    )


def _rating(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidField(f"'rating' must be a number, got a JSON {_kind(value)} ({json.dumps(value)[:40]})")
    if not MIN_RATING <= value <= MAX_RATING:
        raise InvalidField(f"'rating' must be between {MIN_RATING} and {MAX_RATING}, got {value}")
    return float(value)


def _type(value: Any) -> str:
    if value not in EVENT_TYPES:
        raise InvalidField(f"'type' must be one of {list(EVENT_TYPES)}, got {json.dumps(value)[:40]}")
    return str(value)


def _event_id(value: Any) -> str:
    if not isinstance(value, str) or not EVENT_ID_RE.match(value):
        raise InvalidField(
            f"'event_id' must be a string of 1-128 letters, digits or _.:- characters, got {json.dumps(value)[:60]}"
        )
    return value
