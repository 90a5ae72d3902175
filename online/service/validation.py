"""The request body of ``POST /ml/rec``, checked field by field.

``{"userid": <integer 0..2^63-1>, "size": <integer 1..max_size, optional>}``: JSON booleans, floats
(even ``12.0``), strings and out-of-range numbers are refused with a message naming the field;
unknown fields are refused too, so a misspelt ``"sise"`` does not silently get the default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from online.service.errors import InvalidBody, InvalidField, MalformedJson, MissingField, UnknownField

MAX_USERID = 2**63 - 1  # ids are int64 in every store
FIELDS = ("userid", "size")


@dataclass(frozen=True)
class RecRequest:
    userid: int
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
    return RecRequest(userid, size)


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
