"""The requests of the API, checked field by field (``online/service/openapi.py`` builds the contract from these).

``POST /ml/rec``: ``{"userid": <integer 0..2^63-1>, "size": <integer 1..max_size, optional>,
"fields": <array of "title"/"year"/"genres", optional>, "explain": <boolean, optional>}``. JSON
booleans, floats (even ``12.0``), strings and out-of-range numbers are refused with a message naming
the field; unknown fields are refused too, so a misspelt ``"sise"`` does not silently get the default.
Items carry every field of ``ITEM_FIELDS`` unless ``fields`` names fewer (``[]``: ids and scores only);
``explain: true`` adds each item's reason.

``GET /ml/users/<userid>/history?size=`` and ``GET /ml/items?q=&size=``: the same rules for the path
and query parameters; unknown query parameters are refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from data_exchange_center.item_catalog import ITEM_FIELDS
from online.service.errors import InvalidBody, InvalidField, MalformedJson, MissingField, UnknownField

MAX_USERID = 2**63 - 1  # ids are int64 in every store
FIELDS = ("userid", "size", "fields", "explain")
HISTORY_PARAMS = ("size",)
DEFAULT_HISTORY_SIZE, MAX_HISTORY_SIZE = 10, 100
ITEMS_PARAMS = ("q", "size")
DEFAULT_ITEMS_SIZE, MAX_ITEMS_SIZE = 20, 100
MAX_QUERY_CHARS = 100


@dataclass(frozen=True)
class RecRequest:
    userid: int
    size: int
    fields: tuple[str, ...] = ITEM_FIELDS
    explain: bool = False


@dataclass(frozen=True)
class HistoryRequest:
    userid: int
    size: int


@dataclass(frozen=True)
class ItemsRequest:
    query: str
    size: int


def parse_rec_request(raw: bytes, default_size: int, max_size: int) -> RecRequest:
    body = _decode(raw)
    if not isinstance(body, dict):
        raise InvalidBody(f'the body must be a JSON object like {{"userid": 1}}, got a JSON {_kind(body)}')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise UnknownField(f"unknown field(s) {unknown}; allowed: {list(FIELDS)}")
    if "userid" not in body:
        raise MissingField("the field 'userid' is required")
    userid = _integer(body["userid"], "userid", 0, MAX_USERID)
    size = default_size if body.get("size") is None else _integer(body["size"], "size", 1, max_size)
    fields = ITEM_FIELDS if body.get("fields") is None else _item_fields(body["fields"])
    explain = False if body.get("explain") is None else _boolean(body["explain"], "explain")
    return RecRequest(userid, size, fields, explain)


def parse_history_request(userid: str, args: Mapping[str, str]) -> HistoryRequest:
    """``GET /ml/users/<userid>/history``: the path's user id and the optional ``size`` query parameter."""
    _refuse_unknown_params(args, HISTORY_PARAMS)
    size = _query_integer(args, "size", DEFAULT_HISTORY_SIZE, 1, MAX_HISTORY_SIZE)
    return HistoryRequest(_text_integer(userid, "userid", 0, MAX_USERID), size)


def parse_items_request(args: Mapping[str, str]) -> ItemsRequest:
    """``GET /ml/items``: ``q`` (a part of a title, case-insensitive; empty: the most popular) and ``size``."""
    _refuse_unknown_params(args, ITEMS_PARAMS)
    query = args.get("q", "")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidField(f"'q' must be at most {MAX_QUERY_CHARS} characters, got {len(query)}")
    return ItemsRequest(query, _query_integer(args, "size", DEFAULT_ITEMS_SIZE, 1, MAX_ITEMS_SIZE))


def _refuse_unknown_params(args: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise UnknownField(f"unknown query parameter(s) {[u[:40] for u in unknown[:5]]}; allowed: {list(allowed)}")


def _query_integer(args: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return default if name not in args else _text_integer(args[name], name, low, high)


def _text_integer(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise InvalidField(f"'{name}' must be a whole number between {low} and {high}, got {text[:40]!r}")
    return _integer(int(text), name, low, high)


def _item_fields(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidField(f"'fields' must be an array of names from {list(ITEM_FIELDS)}, got {json.dumps(value)[:60]}")
    unknown = sorted(set(value) - set(ITEM_FIELDS))
    if unknown or len(set(value)) != len(value):
        problem = f"unknown name(s) {[u[:40] for u in unknown[:5]]}" if unknown else "a repeated name"
        raise InvalidField(f"'fields' has {problem}; allowed: {list(ITEM_FIELDS)}")
    return tuple(f for f in ITEM_FIELDS if f in value)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidField(f"'{name}' must be true or false, got a JSON {_kind(value)} ({json.dumps(value)[:40]})")
    return value


def _decode(raw: bytes) -> Any:
    if not raw:
        raise MalformedJson('the body is empty; send a JSON object like {"userid": 1}')
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJson(f"the body is not valid JSON: {str(exc)[:120]}") from None


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"'{name}' must be an integer, got a JSON {_kind(value)} ({json.dumps(value)[:40]})")
    if not low <= value <= high:
        raise InvalidField(
            f"'{name}' must be between {low} and {high}, got {value if value.bit_length() < 128 else 'a larger number'}"
        )
    return value


def _kind(value: Any) -> str:
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
