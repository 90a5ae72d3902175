"""The routes a person and a client author use: the page, the OpenAPI document, a user's history and title search.

- ``GET /`` and ``/static/*``: the recommendations explorer (``online/static/``: plain HTML and a
  little JavaScript over the public API; ``/?user=1`` opens user 1);
- ``GET /openapi.json``: the contract of every endpoint (``online.service.openapi``);
- ``GET /ml/users/<userid>/history``: the user's latest seen items with titles (the profile store's
  state, the same one the recommendations start from);
- ``GET /ml/items?q=``: items by title, from the published item catalog.

They share ``/ml/rec``'s edge: API key, request ids, JSON errors, metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, g, request

from data_exchange_center.chain import UserState
from data_exchange_center.item_catalog import ITEM_FIELDS, ItemCatalog
from online.backends.base import BackendError, NotLoaded
from online.service.errors import NotReady, Unavailable
from online.service.openapi import build_openapi
from online.service.resilience import Deadline
from online.service.service import RecService
from online.service.validation import parse_history_request, parse_items_request

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def describe_items(entries: list[dict[str, Any]], catalog: ItemCatalog, fields: tuple[str, ...]) -> None:
    """Add the catalog's ``fields`` (title, year, genres) to each ``{"itemid": ...}`` entry of the list."""
    if not fields or not entries:
        return
    described = catalog.describe(np.array([e["itemid"] for e in entries], dtype=np.int64), fields)
    for position, extra in enumerate(described):
        entry = entries[position]
        entries[position] = {"itemid": entry["itemid"], **extra, **entry}  # the id and title first


def fetch_user_state(service: RecService, userid: int) -> tuple[UserState | None, dict[str, Any], list[str]]:
    """The user's state as ``POST /ml/rec`` starts from it: the profile store's, with live events applied."""
    service.start()
    try:
        state, req = service.recommender.user_state(userid, Deadline(service.settings.request_timeout_ms / 1000))
    except NotLoaded as exc:
        raise NotReady(f"the service is not ready: {exc}") from None
    except BackendError as exc:
        raise Unavailable(f"the profile store did not answer: {exc}") from None
    return state, dict(req.versions), list(req.degraded)


def register_page_routes(app: Flask, service: RecService, require_key: Any) -> None:
    """``require_key()`` raises ``Unauthorized`` when an API key is configured and not sent."""
    app.static_folder = str(STATIC_DIR)
    openapi = build_openapi(service.settings.max_size, service.settings.max_events_per_request)

    @app.get("/")
    def page() -> Response:
        response = app.send_static_file("index.html")
        response.headers.update(PAGE_HEADERS)
        return response

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        return json_response(openapi)

    @app.get("/ml/users/<userid>/history")
    def user_history(userid: str) -> Response:
        require_key()
        req = parse_history_request(userid, request.args)
        state, versions, degraded = fetch_user_state(service, req.userid)
        g.userid, g.degraded = req.userid, degraded
        catalog = service.catalog.current()
        seen = state.seen[::-1][: req.size] if state is not None else np.zeros(0, np.int64)
        labels = state.seen_labels[::-1][: req.size] if state is not None else np.zeros(0, np.int8)
        items = [{"itemid": int(i), "liked": bool(label > 0)} for i, label in zip(seen, labels, strict=True)]
        describe_items(items, catalog, ITEM_FIELDS)
        versions |= {"items": catalog.version}
        known = state is not None
        return json_response(
            {"userid": req.userid, "known": known, "items": items, "versions": versions, "degraded": degraded}
        )

    @app.get("/ml/items")
    def search_items() -> Response:
        require_key()
        req = parse_items_request(request.args)
        catalog = service.catalog.current()
        items = [{"itemid": int(i)} for i in catalog.search(req.query, req.size)]
        describe_items(items, catalog, ITEM_FIELDS)
        return json_response({"items": items, "version": catalog.version})

    @app.after_request
    def page_headers(response: Response) -> Response:
        if request.path.startswith("/static/"):
            response.headers.update(PAGE_HEADERS)
        return response
