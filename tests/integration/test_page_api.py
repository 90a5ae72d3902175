"""Titles, reasons, history, title search, the page and the OpenAPI document on the embedded profile
(Flask test client over tiny published artifacts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.item_catalog import CATALOG_FILE
from data_exchange_center.settings import load_settings
from online.main.s1_server import create_app, service_of
from online.service.openapi import build_openapi
from tests.fixtures_artifacts import TinyArtifacts
from tests.online_support import expected_list, publish_tiny, user_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return publish_tiny(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def app(tiny: TinyArtifacts) -> Iterator[Flask]:
    app = create_app(load_settings({"data_dir": tiny.paths.data_dir, "log_level": "WARNING"}))
    service = service_of(app)
    service.wait_until_loaded(120)
    deadline = time.monotonic() + 30
    while not service.catalog.status().ready and time.monotonic() < deadline:
        time.sleep(0.05)  # the catalog loads on its own background thread
    assert service.catalog.status().ready, service.catalog.status()
    yield app
    service.close()


def post(app: Flask, body: Any) -> Any:
    return app.test_client().post("/ml/rec", json=body)


def published_titles(tiny: TinyArtifacts) -> dict[int, str]:
    catalog = pd.read_parquet(L.current_version_dir(L.items_store_dir(tiny.paths)) / CATALOG_FILE)
    return dict(zip(catalog[S.ITEM_ID].tolist(), catalog[S.TITLE].tolist(), strict=True))


def test_items_carry_title_year_and_genres_from_the_published_catalog(app: Flask, tiny: TinyArtifacts) -> None:
    userid = int(tiny.userids[2])
    body = post(app, {"userid": userid, "size": 5}).get_json()
    titles = published_titles(tiny)
    assert [e["itemid"] for e in body["item_list"]] == expected_list(tiny.paths, userid, 5)[0].tolist()
    for entry in body["item_list"]:
        assert entry["title"] == titles[entry["itemid"]] and entry["title"].startswith("Tiny film ")
        assert isinstance(entry["year"], int) and entry["genres"] and "reason" not in entry
    assert {"fetch_user_profile", "recall_candidates", "fetch_features", "score", "rank_and_filter"} <= set(
        body["timings_ms"]
    )
    assert "explain" not in body["timings_ms"] and all(ms >= 0 for ms in body["timings_ms"].values())
    lean = post(app, {"userid": userid, "size": 5, "fields": []}).get_json()
    assert all(set(e) == {"itemid", "score"} for e in lean["item_list"])
    only_title = post(app, {"userid": userid, "size": 5, "fields": ["title"]}).get_json()
    assert all(set(e) == {"itemid", "score", "title"} for e in only_title["item_list"])


def test_reasons_name_the_users_real_triggers_and_reproduce_the_score(app: Flask, tiny: TinyArtifacts) -> None:
    checked = 0
    for userid in tiny.userids[1:6].tolist():
        body = post(app, {"userid": userid, "size": 10, "explain": True}).get_json()
        state = user_state(tiny.paths, userid)
        titles = published_titles(tiny)
        assert "explain" in body["timings_ms"] and body["degraded"] == []
        for entry in body["item_list"]:
            reason = entry["reason"]
            assert reason["channel"] in ("i2i", "vector", "term", "popularity") and reason["summary"]
            parts = reason["score_parts"]
            rebuilt = (parts["watch"] + parts["prior_weight"] * parts["channel_prior"]) * parts["like"] ** parts[
                "like_weight"
            ]
            assert entry["score"] == pytest.approx(parts["final"], abs=2e-6) == pytest.approx(rebuilt, abs=1e-5)
            triggers = reason["evidence"].get("triggers", [])
            for trigger in triggers:
                assert trigger["itemid"] in state.seen.tolist()  # one of this user's own items
                assert trigger["title"] == titles[trigger["itemid"]]
                liked = state.seen_labels[state.seen.tolist().index(trigger["itemid"])] > 0
                assert trigger["liked"] == bool(liked)
                checked += 1
            if reason["channel"] == "i2i":
                assert triggers and reason["summary"].startswith("Because you rated " + triggers[0]["title"])
            for genre in reason["evidence"].get("matched_genres", []):
                assert genre in state.terms and genre in entry["genres"]
    assert checked > 0


def test_history_is_the_users_latest_items_with_titles(app: Flask, tiny: TinyArtifacts) -> None:
    userid = int(tiny.userids[3])
    state = user_state(tiny.paths, userid)
    body = app.test_client().get(f"/ml/users/{userid}/history?size=3").get_json()
    want = state.seen[::-1][:3].tolist()
    assert body["known"] is True and [e["itemid"] for e in body["items"]] == want
    assert [e["liked"] for e in body["items"]] == (state.seen_labels[::-1][:3] > 0).tolist()
    assert all(e["title"] == published_titles(tiny)[e["itemid"]] for e in body["items"])
    unknown = app.test_client().get("/ml/users/999999/history").get_json()
    assert unknown["known"] is False and unknown["items"] == []


def test_title_search_by_part_of_a_title(app: Flask, tiny: TinyArtifacts) -> None:
    item = int(tiny.itemids[4])
    body = app.test_client().get(f"/ml/items?q=FILM {item}&size=5").get_json()
    assert item in [e["itemid"] for e in body["items"]] and body["version"]
    assert all(f"film {item}" in e["title"] for e in body["items"])  # case-insensitive part of the title
    assert len(app.test_client().get("/ml/items?size=7").get_json()["items"]) == 7


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code", "words"),
    [
        ("post", "/ml/rec", {"userid": 1, "explain": "yes"}, 422, "invalid_field", "'explain' must be true or false"),
        ("post", "/ml/rec", {"userid": 1, "fields": "title"}, 422, "invalid_field", "'fields' must be an array"),
        ("post", "/ml/rec", {"userid": 1, "fields": ["rating"]}, 422, "invalid_field", "unknown name(s) ['rating']"),
        ("post", "/ml/rec", {"userid": 1, "explian": True}, 422, "unknown_field", "unknown field(s) ['explian']"),
        ("get", "/ml/users/abc/history", None, 422, "invalid_field", "'userid' must be a whole number"),
        ("get", "/ml/users/1/history?size=0", None, 422, "invalid_field", "'size' must be between 1 and 100"),
        ("get", "/ml/items?q=a&limit=3", None, 422, "unknown_field", "unknown query parameter(s) ['limit']"),
        ("get", "/ml/items?q=" + "x" * 101, None, 422, "invalid_field", "'q' must be at most 100 characters"),
        ("get", "/nowhere", None, 404, "not_found", "GET /openapi.json"),
    ],
)
def test_bad_input_gets_a_json_error(
    app: Flask, method: str, url: str, body: Any, status: int, code: str, words: str
) -> None:
    client = app.test_client()
    reply = client.post(url, json=body) if method == "post" else client.get(url)
    assert reply.status_code == status and reply.mimetype == "application/json"
    error = reply.get_json()["error"]
    assert error["code"] == code and words in error["message"], error


def test_the_page_and_the_openapi_document_are_served(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b'<script src="/static/page.js"' in page.data
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = client.get("/static/page.js")
    assert script.status_code == 200 and b"textContent" in script.data and b"innerHTML" not in script.data
    document = client.get("/openapi.json").get_json()
    settings = service_of(app).settings
    assert document == build_openapi(settings.max_size, settings.max_events_per_request)


def test_an_api_key_guards_history_and_search_too(tiny: TinyArtifacts) -> None:
    app = create_app(load_settings({"data_dir": tiny.paths.data_dir, "log_level": "WARNING", "api_key": "k3y"}))
    try:
        client = app.test_client()
        for url in ("/ml/users/1/history", "/ml/items?q=a"):
            assert client.get(url).status_code == 401
            assert client.get(url, headers={"X-API-Key": "k3y"}).status_code in (200, 503)
        assert client.get("/").status_code == 200  # the page itself is public; its API calls are not
    finally:
        service_of(app).close()


def test_unknown_items_in_the_catalog_read_as_null(app: Flask) -> None:
    catalog = service_of(app).catalog.current()
    assert catalog.describe(np.array([-5])) == [{"title": None, "year": None, "genres": []}]
