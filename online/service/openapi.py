"""The OpenAPI 3.1 document of the service, built from the same constants that validate requests.

``GET /openapi.json`` serves it for the running settings (``max_size``); ``online/openapi.json`` is the
same document for the default settings, regenerated with::

    python -m online.service.openapi > online/openapi.json

A unit test keeps the file equal to the generated document and checks the request schemas against
``online.service.validation`` on a table of bodies; the fuzzing test (``schemathesis``) sends what the
document allows, and what it forbids, to a running server.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from data_exchange_center.chain import CHANNELS
from data_exchange_center.events import EVENT_ID_RE, EVENT_TYPES, MAX_RATING, MIN_RATING
from data_exchange_center.item_catalog import ITEM_FIELDS
from data_exchange_center.settings import Settings
from online.service import event_validation as EV
from online.service import validation as V

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
NULLABLE_STRING = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"content": {"application/json": media}}


def _error(description: str, code: str, message: str) -> dict[str, Any]:
    return {"description": description} | _json(_ref("Error"), {"error": {"code": code, "message": message}})


ERRORS = {
    "400": _error("The body is not JSON, or not a JSON object", "malformed_json", "the body is not valid JSON"),
    "401": _error(
        "An API key is configured and the request did not send it",
        "unauthorized",
        "send a valid API key in the X-API-Key header",
    ),
    "413": _error("The body is larger than the limit", "body_too_large", "the body is larger than 4096 bytes"),
    "415": _error(
        "The body is not sent as application/json",
        "unsupported_media_type",
        "send the body as application/json, not text/plain",
    ),
    "422": _error(
        "A field or parameter is missing, unknown or invalid",
        "invalid_field",
        "'size' must be between 1 and 200, got 0",
    ),
    "429": _error(
        "A per-client rate limit is configured and this client went over it (see Retry-After)",
        "rate_limited",
        "more than 50 requests per second; retry later",
    ),
    "503": _error(
        "Not ready yet, or no backend could answer; retry after a second",
        "not_ready",
        "the service is not ready: item_index: not loaded yet",
    ),
}


def rec_request_schema(max_size: int) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["userid"],
        "properties": {
            "userid": {
                "type": "integer",
                "minimum": 0,
                "maximum": V.MAX_USERID,
                "description": "the user; an id the service does not know gets the popular items",
            },
            "size": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": max_size,
                "description": "items to return (null or absent: the service's default_size)",
            },
            "fields": {
                "type": ["array", "null"],
                "uniqueItems": True,
                "items": {"enum": list(ITEM_FIELDS)},
                "description": "item fields to include (null or absent: all of them; [] for ids and scores)",
            },
            "explain": {
                "type": ["boolean", "null"],
                "description": "true: each item carries its reason (channel, evidence, score parts)",
            },
        },
    }


def _item_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["itemid"],
        "properties": {
            "itemid": {"type": "integer"},
            "title": NULLABLE_STRING | {"description": "title without the year; null for an item not in the catalog"},
            "year": {"type": ["integer", "null"]},
            "genres": {"type": "array", "items": {"type": "string"}},
        },
    }


def _reason_schema() -> dict[str, Any]:
    number = {"type": "number"}
    trigger = {
        "type": "object",
        "required": ["itemid", "title", "liked", "contribution"],
        "properties": {
            "itemid": {"type": "integer"},
            "title": NULLABLE_STRING,
            "liked": {"type": "boolean"},
            "contribution": number | {"description": "this item's share of the item-to-item score"},
        },
    }
    parts = ("i2i_score", "watch", "channel_prior", "prior_weight", "like", "like_weight", "ranker", "final")
    return {
        "type": "object",
        "required": ["channel", "rank_in_channel", "evidence", "score_parts", "summary"],
        "properties": {
            "channel": {"enum": list(CHANNELS), "description": "the recall channel that proposed the item"},
            "rank_in_channel": {"type": "integer", "minimum": 1},
            "evidence": {
                "type": "object",
                "properties": {
                    "triggers": {
                        "type": "array",
                        "items": trigger,
                        "description": "the user's items whose neighbours reached this one",
                    },
                    "matched_genres": {"type": "array", "items": {"type": "string"}},
                    "similarity": number | {"description": "inner product of the user and item vectors"},
                    "popularity_rank": {"type": "integer", "minimum": 1},
                },
            },
            "score_parts": {
                "type": "object",
                "required": ["i2i_score", "final"],
                "properties": {p: number for p in parts},
                "description": "a ranker trained on the recall candidates (its output, p_watch * p_like ** w, is the "
                "score): i2i_score, ranker, final = ranker. Otherwise the blend: final = (watch + prior_weight * "
                "channel_prior) * like ** like_weight; watch = i2i_score / the best i2i_score among the candidates. "
                "The triggers' contributions add up to i2i_score",
            },
            "summary": {"type": "string"},
        },
    }


def event_schema() -> dict[str, Any]:
    """One event of ``POST /ml/events`` (``online.service.event_validation``): a rating or a type."""
    ident = {"type": "integer", "minimum": 0, "maximum": EV.MAX_ID}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(EV.REQUIRED),
        "properties": {
            "userid": ident,
            "itemid": ident | {"description": "an item of the live catalog"},
            "timestamp": {"type": "integer", "minimum": 0, "maximum": EV.MAX_TIMESTAMP,
                          "description": "seconds since the epoch"},
            "event_id": {"type": "string", "pattern": EVENT_ID_RE.pattern,
                         "description": "the idempotency key: an id already stored is not stored again"},
            "rating": {"type": ["number", "null"], "minimum": MIN_RATING, "maximum": MAX_RATING},
            "type": {"type": ["string", "null"], "enum": [*EVENT_TYPES, None]},
        },
        "oneOf": [
            {"required": ["rating"], "properties": {"rating": {"type": "number"}, "type": {"type": "null"}}},
            {"required": ["type"], "properties": {"type": {"type": "string"}, "rating": {"type": "null"}}},
        ],
    }  # fmt: skip


def _schemas(max_size: int) -> dict[str, Any]:
    rec_item = {
        "allOf": [
            _ref("Item"),
            {
                "type": "object",
                "required": ["score"],
                "properties": {"score": {"type": "number"}, "reason": _ref("Reason")},
            },
        ]
    }
    return {
        "RecRequest": rec_request_schema(max_size),
        "Event": event_schema(),
        "EventsAccepted": {
            "type": "object",
            "required": ["accepted", "stored", "duplicates"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("accepted", "stored", "duplicates")},
        },
        "Item": _item_schema(),
        "RecItem": rec_item,
        "Reason": _reason_schema(),
        "RecResponse": {
            "type": "object",
            "required": ["userid", "item_list", "versions", "degraded", "timings_ms", "variant"],
            "properties": {
                "userid": {"type": "integer"},
                "item_list": {"type": "array", "items": _ref("RecItem")},
                "versions": {
                    "type": "object",
                    "additionalProperties": NULLABLE_STRING,
                    "description": "the published version of each component that answered",
                },
                "degraded": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "components that failed and were replaced by their fallback",
                },
                "variant": {"type": "string", "description": "the user's experiment variant"},
                "timings_ms": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                    "description": "milliseconds spent in each step of the chain",
                },
            },
        },
        "HistoryResponse": {
            "type": "object",
            "required": ["userid", "known", "items", "versions", "degraded"],
            "properties": {
                "userid": {"type": "integer"},
                "known": {"type": "boolean", "description": "false: the profile store has no state for this user"},
                "items": {
                    "type": "array",
                    "items": {
                        "allOf": [_ref("Item"), {"type": "object", "properties": {"liked": {"type": "boolean"}}}]
                    },
                    "description": "the latest first",
                },
                "versions": {"type": "object", "additionalProperties": NULLABLE_STRING},
                "degraded": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ItemsResponse": {
            "type": "object",
            "required": ["items", "version"],
            "properties": {"items": {"type": "array", "items": _ref("Item")}, "version": NULLABLE_STRING},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
    }


REC_EXAMPLE = {
    "userid": 1,
    "item_list": [
        {
            "itemid": 1196,
            "score": 0.6097,
            "title": "Star Wars: Episode V - The Empire Strikes Back",
            "year": 1980,
            "genres": ["Action", "Adventure", "Drama", "Sci-Fi", "War"],
            "reason": {
                "channel": "i2i",
                "rank_in_channel": 1,
                "evidence": {
                    "triggers": [
                        {
                            "itemid": 260,
                            "title": "Star Wars: Episode IV - A New Hope",
                            "liked": True,
                            "contribution": 0.41,
                        }
                    ],
                    "matched_genres": ["Action"],
                    "similarity": 0.83,
                },
                "score_parts": {
                    "i2i_score": 0.41,
                    "watch": 0.9,
                    "channel_prior": 1.0,
                    "prior_weight": 0.01,
                    "like": 0.67,
                    "like_weight": 1.0,
                    "final": 0.6097,
                },
                "summary": "Because you rated Star Wars: Episode IV - A New Hope",
            },
        },
    ],
    "versions": {
        "users": "20261125T131950123456Z-3f9a",
        "items": "20261125T131951123456Z-0b1c",
        "features": "20261125T131952123456Z-77aa",
        "model": "1",
    },
    "degraded": [],
    "variant": "control",
    "timings_ms": {
        "fetch_user_profile": 0.1,
        "recall_candidates": 2.3,
        "fetch_features": 1.2,
        "score": 3.4,
        "rank_and_filter": 0.2,
        "explain": 0.3,
    },
}


def _paths(max_size: int, max_events: int) -> dict[str, Any]:
    e = ERRORS
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "/ml/rec": {
            "post": {
                "operationId": "recommend",
                "summary": "The ranked recommendations of one user, with titles and optional reasons",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("RecRequest"),
                            "examples": {
                                "plain": {"value": {"userid": 1}},
                                "explained": {"value": {"userid": 1, "size": 10, "explain": True}},
                                "ids only": {"value": {"userid": 1, "size": 5, "fields": []}},
                            },
                        }
                    },
                },
                "responses": {
                    "200": {"description": "The ranked list"} | _json(_ref("RecResponse"), REC_EXAMPLE),
                    **{k: e[k] for k in ("400", "401", "413", "415", "422", "429", "503")},
                },
            }
        },
        "/ml/users/{userid}/history": {
            "get": {
                "operationId": "userHistory",
                "summary": "The user's latest rated items (the profile store's seen items), with titles",
                "parameters": [
                    {
                        "name": "userid",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": V.MAX_USERID},
                        "example": 1,
                    },
                    {
                        "name": "size",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": V.MAX_HISTORY_SIZE,
                            "default": V.DEFAULT_HISTORY_SIZE,
                        },
                    },
                ],
                "responses": {
                    "200": {"description": "The latest items first"}
                    | _json(
                        _ref("HistoryResponse"),
                        {
                            "userid": 1,
                            "known": True,
                            "versions": {"users": "20261125T131950123456Z-3f9a", "items": None},
                            "degraded": [],
                            "items": [
                                {
                                    "itemid": 260,
                                    "title": "Star Wars: Episode IV - A New Hope",
                                    "year": 1977,
                                    "genres": ["Action", "Adventure", "Fantasy", "Sci-Fi"],
                                    "liked": True,
                                }
                            ],
                        },
                    ),
                    **{k: e[k] for k in ("401", "422", "429", "503")},
                },
            }
        },
        "/ml/items": {
            "get": {
                "operationId": "searchItems",
                "summary": "Items whose title contains q (case-insensitive), most popular first",
                "parameters": [
                    {
                        "name": "q",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": V.MAX_QUERY_CHARS},
                        "example": "alien",
                    },
                    {
                        "name": "size",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": V.MAX_ITEMS_SIZE,
                            "default": V.DEFAULT_ITEMS_SIZE,
                        },
                    },
                ],
                "responses": {
                    "200": {"description": "Matching items"}
                    | _json(
                        _ref("ItemsResponse"),
                        {
                            "version": "20261125T131951123456Z-0b1c",
                            "items": [
                                {
                                    "itemid": 1214,
                                    "title": "Alien",
                                    "year": 1979,
                                    "genres": ["Action", "Horror", "Sci-Fi"],
                                }
                            ],
                        },
                    ),
                    **{k: e[k] for k in ("401", "422", "429", "503")},
                },
            }
        },
        "/ml/events": {
            "post": {
                "operationId": "postEvents",
                "summary": "Store live feedback (one event or a batch); the next /ml/rec of that user reflects it",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    _ref("Event"),
                                    {"type": "array", "minItems": 1, "maxItems": max_events, "items": _ref("Event")},
                                ]
                            },
                            "examples": {
                                "like": {
                                    "value": {
                                        "userid": 1,
                                        "itemid": 1214,
                                        "type": "like",
                                        "timestamp": 978300760,
                                        "event_id": "page-1",
                                    }
                                },
                                "ratings": {
                                    "value": [
                                        {
                                            "userid": 1,
                                            "itemid": 1214,
                                            "rating": 4.5,
                                            "timestamp": 978300760,
                                            "event_id": "c0ffee-1",
                                        },
                                        {
                                            "userid": 1,
                                            "itemid": 1200,
                                            "rating": 2,
                                            "timestamp": 978300761,
                                            "event_id": "c0ffee-2",
                                        },
                                    ]
                                },
                            },
                        }
                    },
                },
                "responses": {
                    "202": {"description": "Every event is stored durably (fsynced)"}
                    | _json(_ref("EventsAccepted"), {"accepted": 2, "stored": 1, "duplicates": 1}),
                    **{k: e[k] for k in ("400", "401", "413", "415", "422", "429", "503")},
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "The process is up",
                "responses": {
                    "200": {"description": "Up"}
                    | _json({"type": "object", "properties": {"status": {"const": "ok"}}}, {"status": "ok"})
                },
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Every backend role can answer",
                "responses": {
                    code: {"description": desc}
                    | _json(
                        {
                            "type": "object",
                            "required": ["ready", "backends"],
                            "properties": {"ready": {"type": "boolean"}, "backends": {"type": "object"}},
                        }
                    )
                    for code, desc in (("200", "Ready"), ("503", "Not ready: see backends"))
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": text}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"} | _json({"type": "object"})},
            }
        },
        "/": {
            "get": {
                "operationId": "page",
                "summary": "The recommendations explorer page (?user=1 opens user 1)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
    }


def build_openapi(max_size: int | None = None, max_events: int | None = None) -> dict[str, Any]:
    """The document for a server with these settings (default: the settings' defaults)."""
    if max_size is None:
        max_size = int(Settings.model_fields["max_size"].default)
    if max_events is None:
        max_events = int(Settings.model_fields["max_events_per_request"].default)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "recsys-pipeline online service",
            "version": API_VERSION,
            "description": "Recommendations from the offline-to-online MovieLens pipeline. Every error is "
            '`{"error": {"code": ..., "message": ...}}`. When the server has an API key, send it in X-API-Key.',
        },
        "paths": _paths(max_size, max_events),
        "components": {
            "schemas": _schemas(max_size),
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dumps(build_openapi()))
