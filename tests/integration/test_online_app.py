"""The Flask app on the embedded profile over tiny published artifacts (Flask test client, no servers)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import load_settings
from online.backends.base import NotLoaded, ReadyStatus
from online.main.s1_server import create_app, service_of
from tests.fixtures_artifacts import TinyArtifacts, write_tiny_artifacts
from tests.online_support import (
    copy_published,
    expected_list,
    live_versions,
    publish_model,
    publish_tiny,
    publish_users,
    user_state,
    write_chain_params,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return publish_tiny(tmp_path_factory.mktemp("published"))


def make_app(data_dir: Path, backends: dict[str, Any] | None = None, **overrides: Any) -> Flask:
    settings = load_settings({"data_dir": data_dir, "log_level": "WARNING", **overrides})
    app = create_app(settings, backends=backends)
    service_of(app).wait_until_loaded(120)
    return app


@pytest.fixture(scope="module")
def app(tiny: TinyArtifacts) -> Iterator[Flask]:
    app = make_app(tiny.paths.data_dir)
    yield app
    service_of(app).close()


def rec(app: Flask, body: Any, **kwargs: Any) -> Any:
    return app.test_client().post("/ml/rec", json=body, **kwargs)


# --- the happy path ---------------------------------------------------------------------------------
def test_a_known_user_gets_the_evaluated_chain_list(app: Flask, tiny: TinyArtifacts) -> None:
    userid = int(tiny.userids[5])
    reply = rec(app, {"userid": userid, "size": 10})
    assert reply.status_code == 200
    body = reply.get_json()
    items = [entry["itemid"] for entry in body["item_list"]]
    want_items, want_scores = expected_list(tiny.paths, userid, 10)
    assert items == want_items.tolist()
    np.testing.assert_allclose([e["score"] for e in body["item_list"]], want_scores, atol=1e-6)
    assert body["userid"] == userid and body["degraded"] == []
    assert not set(items) & set(user_state(tiny.paths, userid).seen.tolist())


def test_versions_name_the_published_versions(app: Flask, tiny: TinyArtifacts) -> None:
    versions = rec(app, {"userid": int(tiny.userids[1])}).get_json()["versions"]
    assert {k: versions[k] for k in ("users", "items")} == live_versions(tiny.paths)
    assert versions["model"] == "ml_rec/1" and versions["features"].startswith("20")


def test_the_default_size_is_50_and_capped_by_the_unseen_catalogue(app: Flask, tiny: TinyArtifacts) -> None:
    userid = int(tiny.userids[2])
    items = [e["itemid"] for e in rec(app, {"userid": userid}).get_json()["item_list"]]
    n_unseen = len(tiny.itemids) - len(user_state(tiny.paths, userid).seen)
    assert len(items) == min(50, n_unseen) == len(set(items))


@pytest.mark.parametrize("size", [1, 7, 200])
def test_size_is_honoured(app: Flask, tiny: TinyArtifacts, size: int) -> None:
    reply = rec(app, {"userid": int(tiny.userids[0]), "size": size})
    assert reply.status_code == 200 and len(reply.get_json()["item_list"]) == min(size, len(tiny.itemids))


def test_an_unknown_user_gets_the_popular_items(app: Flask, tiny: TinyArtifacts) -> None:
    import pandas as pd

    reply = rec(app, {"userid": 987654321, "size": 5})
    assert reply.status_code == 200
    body = reply.get_json()
    popularity = pd.read_parquet(tiny.paths.popularity_path)
    top = popularity.sort_values(["score", "itemid"], ascending=[False, True])["itemid"].head(5).tolist()
    assert sorted(e["itemid"] for e in body["item_list"]) == sorted(top) and body["degraded"] == []


def test_request_ids_are_echoed_or_made(app: Flask, tiny: TinyArtifacts) -> None:
    client = app.test_client()
    echoed = client.post("/ml/rec", json={"userid": 1}, headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    replaced = client.post("/ml/rec", json={"userid": 1}, headers={"X-Request-ID": "bad id;" * 30})
    assert replaced.headers["X-Request-ID"] != "bad id;" * 30 and len(replaced.headers["X-Request-ID"]) == 32


# --- client mistakes: 4xx JSON, never a 500 ---------------------------------------------------------
BAD_BODIES = [
    (b"{", 400, "malformed_json"),
    (b"", 400, "malformed_json"),
    (b"\xff\xfe", 400, "malformed_json"),
    (b"[1, 2]", 400, "invalid_body"),
    (b'"userid"', 400, "invalid_body"),
    (b"{}", 422, "missing_field"),
    (b'{"size": 5}', 422, "missing_field"),
    (b'{"userid": -1}', 422, "invalid_field"),
    (b'{"userid": 9223372036854775808}', 422, "invalid_field"),
    (b'{"userid": 1' + b"0" * 400 + b"}", 422, "invalid_field"),
    (b'{"userid": true}', 422, "invalid_field"),
    (b'{"userid": 12.0}', 422, "invalid_field"),
    (b'{"userid": "12"}', 422, "invalid_field"),
    (b'{"userid": null}', 422, "invalid_field"),
    (b'{"userid": NaN}', 422, "invalid_field"),
    (b'{"userid": 1, "size": 0}', 422, "invalid_field"),
    (b'{"userid": 1, "size": 201}', 422, "invalid_field"),
    (b'{"userid": 1, "size": "5"}', 422, "invalid_field"),
    (b'{"userid": 1, "size": false}', 422, "invalid_field"),
    (b'{"userid": 1, "sise": 5}', 422, "unknown_field"),
    (b"[" * 5000 + b"]" * 5000, 413, "body_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
def test_bad_bodies_get_a_4xx_json_error(app: Flask, body: bytes, status: int, code: str) -> None:
    reply = app.test_client().post("/ml/rec", data=body, content_type="application/json")
    assert reply.status_code == status
    error = reply.get_json()["error"]
    assert error["code"] == code and error["message"]


def test_a_nested_body_within_the_limit_is_a_client_error(app: Flask) -> None:
    reply = app.test_client().post("/ml/rec", data=b"[" * 2000 + b"]" * 2000, content_type="application/json")
    assert reply.status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("get", "/ml/rec", {}, 405, "method_not_allowed"),
        ("put", "/ml/rec", {}, 405, "method_not_allowed"),
        ("post", "/health", {}, 405, "method_not_allowed"),
        ("get", "/nope", {}, 404, "not_found"),
        ("post", "/ml/rec", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("post", "/ml/rec", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ],
)
def test_wrong_method_path_or_content_type(
    app: Flask, method: str, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    reply = getattr(app.test_client(), method)(path, data=b'{"userid": 1}', headers=headers)
    assert reply.status_code == status and reply.get_json()["error"]["code"] == code


def test_no_content_type_is_415(app: Flask) -> None:
    reply = app.test_client().post("/ml/rec", data=b'{"userid": 1}')
    assert reply.status_code == 415


def test_a_json_content_type_with_charset_is_accepted(app: Flask) -> None:
    reply = app.test_client().post("/ml/rec", data=b'{"userid": 1}', content_type="application/json; charset=utf-8")
    assert reply.status_code == 200


# --- auth -------------------------------------------------------------------------------------------
def test_the_api_key_is_required_when_set(tiny: TinyArtifacts) -> None:
    app = make_app(tiny.paths.data_dir, api_key="s3cret")
    client = app.test_client()
    assert client.post("/ml/rec", json={"userid": 1}).status_code == 401
    wrong = client.post("/ml/rec", json={"userid": 1}, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.get_json()["error"]["code"] == "unauthorized"
    assert client.post("/ml/rec", json={"userid": 1}, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200


# --- health, readiness, metrics ---------------------------------------------------------------------
def test_ready_reports_every_backend(app: Flask, tiny: TinyArtifacts) -> None:
    reply = app.test_client().get("/ready")
    assert reply.status_code == 200
    backends = reply.get_json()["backends"]
    assert set(backends) == {"profile", "item_index", "features", "scorer"}
    assert backends["profile"]["version"] == live_versions(tiny.paths)["users"]
    assert all(b["ready"] and b["breaker"] == "closed" for b in backends.values())


def test_nothing_published_is_not_ready_and_503(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path, "log_level": "WARNING"})
    client = create_app(settings).test_client()
    time.sleep(0.2)
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
    reply = client.post("/ml/rec", json={"userid": 1})
    assert reply.status_code == 503 and reply.get_json()["error"]["code"] == "not_ready"


def test_metrics_expose_requests_steps_and_candidates(app: Flask, tiny: TinyArtifacts) -> None:
    client = app.test_client()
    client.post("/ml/rec", json={"userid": int(tiny.userids[4])})
    client.post("/ml/rec", json={"userid": -5})
    text = client.get("/metrics").data.decode()
    assert 'recsys_requests_total{endpoint="/ml/rec",outcome="ok"}' in text
    assert 'recsys_requests_total{endpoint="/ml/rec",outcome="client_error"}' in text
    for step in ("fetch_user_profile", "recall_candidates", "fetch_features", "score", "rank_and_filter"):
        assert f'recsys_step_duration_seconds_count{{step="{step}"}}' in text
    assert 'recsys_candidates_count{channel="i2i"}' in text
    assert 'recsys_request_duration_seconds_bucket{endpoint="/ml/rec",le="0.025",outcome="ok"}' in text


# --- failing backends: fallbacks, degraded, breaker -------------------------------------------------
class FailingScorer:
    """A ``Scorer`` that always fails (this project's interface, not a library's)."""

    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, sparse: np.ndarray, dense: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        self.calls += 1
        raise ConnectionError("scorer down")

    def maybe_refresh(self) -> None:
        pass

    def snapshots(self) -> list[Any]:
        return []

    def status(self) -> ReadyStatus:
        return ReadyStatus(False, self.name, None, "down")

    def close(self) -> None:
        pass


class FailingProfiles(FailingScorer):
    def fetch(self, userid: int, timeout_s: float) -> Any:
        self.calls += 1
        raise TimeoutError("profile store timed out")


def test_a_failing_scorer_falls_back_to_the_recall_order_and_the_breaker_opens(tiny: TinyArtifacts) -> None:
    scorer = FailingScorer()
    app = make_app(tiny.paths.data_dir, {"scorer": scorer}, breaker_failures=3, breaker_reset_s=60)
    for _ in range(6):
        reply = rec(app, {"userid": int(tiny.userids[6]), "size": 5})
        assert reply.status_code == 200
        body = reply.get_json()
        assert body["degraded"] == ["scorer"] and body["versions"]["model"] is None and len(body["item_list"]) == 5
    assert scorer.calls == 3  # the breaker opened after 3 failures: no more calls
    assert 'recsys_degraded_responses_total{component="scorer"} 6.0' in app.test_client().get("/metrics").data.decode()
    ready = app.test_client().get("/ready").get_json()
    assert ready["backends"]["scorer"]["breaker"] == "open"


class UnreachableIndex(FailingScorer):
    """An ``ItemIndexProvider`` whose server was never reached: nothing loaded."""

    def current(self) -> Any:
        raise NotLoaded("item_index: version check failed: connection refused")


def test_an_index_unreachable_since_start_up_is_served_by_its_fallback_from_the_first_request(
    tiny: TinyArtifacts,
) -> None:
    app = make_app(tiny.paths.data_dir, {"index": UnreachableIndex()}, index_backend="elasticsearch")
    userid = int(tiny.userids[5])
    body = rec(app, {"userid": userid, "size": 10}).get_json()
    assert body["degraded"] == ["item_index"]
    assert [e["itemid"] for e in body["item_list"]] == expected_list(tiny.paths, userid, 10)[0].tolist()
    ready = app.test_client().get("/ready")
    assert ready.status_code == 200 and ready.get_json()["degraded"] == ["item_index"]
    assert ready.get_json()["backends"]["item_index"]["fallback"]["ready"] is True


def test_strict_readiness_demands_every_primary(tiny: TinyArtifacts) -> None:
    app = make_app(tiny.paths.data_dir, {"index": UnreachableIndex()}, index_backend="elasticsearch",
                   ready_strict=True)  # fmt: skip
    ready = app.test_client().get("/ready")
    assert ready.status_code == 503 and ready.get_json()["degraded"] == ["item_index"]
    assert rec(app, {"userid": int(tiny.userids[5])}).status_code == 200  # requests are still served


def test_a_local_role_without_a_snapshot_is_unavailable(tiny: TinyArtifacts) -> None:
    app = make_app(tiny.paths.data_dir, {"index": UnreachableIndex()})  # local index: no fallback
    ready = app.test_client().get("/ready")
    assert ready.status_code == 503 and ready.get_json()["unavailable"] == ["item_index"]
    assert rec(app, {"userid": int(tiny.userids[5])}).status_code == 503


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        ({}, {"profiles": "local", "index": "local", "features": "local", "scorer": "local"}),
        ({"profile": "compose"}, {"profiles": "redis", "index": "elasticsearch", "scorer": "triton"}),
        ({"profile": "compose", "index_backend": "local"}, {"index": "local", "profiles": "redis"}),
        ({"scorer_backend": "triton"}, {"scorer": "triton", "index": "local"}),
    ],
)
def test_each_role_is_set_on_its_own_over_the_profile_preset(overrides: dict[str, str], want: dict[str, str]) -> None:
    settings = load_settings(overrides, environ={})
    assert {role: settings.backend_of(role) for role in want} == want


def test_a_failing_profile_store_serves_popularity(tiny: TinyArtifacts) -> None:
    app = make_app(tiny.paths.data_dir, {"profiles": FailingProfiles()})
    body = rec(app, {"userid": int(tiny.userids[6]), "size": 5}).get_json()
    assert body["degraded"] == ["profile"] and body["versions"]["users"] is None and len(body["item_list"]) == 5


# --- hot version switch -----------------------------------------------------------------------------
def test_a_new_version_is_served_without_restart_or_failed_requests(tiny: TinyArtifacts, tmp_path: Path) -> None:
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "data")
    app = make_app(data_dir)
    service = service_of(app)
    for refreshing in service.snapshots():
        refreshing.check_interval_s = 0.1
    old = rec(app, {"userid": int(tiny.userids[3])}).get_json()["versions"]
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        client = app.test_client()
        while not stop.is_set():
            statuses.append(client.post("/ml/rec", json={"userid": int(tiny.userids[3])}).status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        publish_users(data_dir)
        publish_model(data_dir)
        new = wait_for_versions(
            app, int(tiny.userids[3]), lambda v: v["users"] != old["users"] and v["model"] != old["model"]
        )
    finally:
        stop.set()
        worker.join()
    assert new["users"] == live_versions(ArtifactPaths(data_dir))["users"]
    assert new["model"] == "ml_rec/2" and new["items"] == old["items"]
    assert statuses and set(statuses) == {200}


def wait_for_versions(app: Flask, userid: int, done: Any, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = rec(app, {"userid": userid})
        assert reply.status_code == 200, reply.get_json()
        versions = reply.get_json()["versions"]
        if done(versions):
            return versions
        time.sleep(0.05)
    pytest.fail(f"no switch within {timeout_s} s: {json.dumps(versions)}")


def test_the_expected_list_leaves_out_seen_items_and_is_sorted(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    write_chain_params(tiny.paths)
    userid = int(tiny.userids[3])
    items, scores = expected_list(tiny.paths, userid, 10)
    assert len(items) == 10 and len(set(items.tolist())) == 10
    assert not np.isin(items, user_state(tiny.paths, userid).seen).any()
    assert (np.diff(scores) <= 0).all()


def test_a_client_over_its_rate_gets_429_with_retry_after(tiny: TinyArtifacts) -> None:
    app = make_app(tiny.paths.data_dir, rate_limit_rps=0.5, rate_limit_burst=2)
    client = app.test_client()
    key = {"X-API-Key": "client-a"}
    statuses = [client.post("/ml/rec", json={"userid": int(tiny.userids[1])}, headers=key) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].headers["Retry-After"] == "2" and statuses[2].get_json()["error"]["code"] == "rate_limited"
    other = client.post("/ml/rec", json={"userid": int(tiny.userids[1])}, headers={"X-API-Key": "client-b"})
    assert other.status_code == 200  # another client's bucket
    assert 'recsys_rejected_total{reason="rate_limit"} 1.0' in client.get("/metrics").data.decode()
