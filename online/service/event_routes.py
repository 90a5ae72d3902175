"""``POST /ml/events``: store live feedback durably, then answer 202.

Authentication, content type and JSON errors work as on ``POST /ml/rec`` (the shared error handlers
answer ``{"error": {"code", "message"}}``). The body limit is ``MAX_EVENTS_BODY_BYTES`` (a batch of
1,000 events is about 100 KB). The reply::

    202 {"accepted": 2, "stored": 1, "duplicates": 1}

``stored`` counts the events new to the log, ``duplicates`` those whose ``event_id`` it already held.
202 means every event of the batch is in the log and fsynced; 503 means none was acknowledged and the
client should send the batch again (the event ids make that safe).
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, Response, g, request

from online.service.errors import Unauthorized, UnsupportedMediaType
from online.service.event_validation import parse_events

MAX_EVENTS_BODY_BYTES = 512 * 1024
API_KEY_HEADER = "X-API-Key"
JSON_TYPE = "application/json"


def register_event_routes(app: Flask, service: Any, json_response: Any) -> None:
    api_key = service.settings.api_key.get_secret_value() if service.settings.api_key else ""

    @app.post("/ml/events")
    def post_events() -> Response:
        if api_key and not hmac.compare_digest(request.headers.get(API_KEY_HEADER, "").encode(), api_key.encode()):
            raise Unauthorized(f"send a valid API key in the {API_KEY_HEADER} header")
        if request.mimetype != JSON_TYPE:
            raise UnsupportedMediaType(f"send the body as {JSON_TYPE}, not {request.mimetype or 'no content type'}")
        request.max_content_length = MAX_EVENTS_BODY_BYTES
        events = parse_events(request.get_data(cache=False), service.settings.max_events_per_request)
        g.userid = events[0].userid
        result = service.ingest_events(events)
        body = {"accepted": len(events), "stored": result.n_stored, "duplicates": result.n_duplicates}
        return json_response(body, 202)
