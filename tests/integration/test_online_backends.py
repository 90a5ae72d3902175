"""The service's compose adapters against real servers: Redis, Triton (gRPC) and `feast serve`.

Each test kills its real server mid-run: requests keep answering 200 with the component named in
``degraded``, and recover once the server is back.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from data_exchange_center.online_layout import python_model_repository_dir
from data_exchange_center.settings import Settings, load_settings
from online.backends.embedded_profiles import EmbeddedProfileStore
from online.backends.feast_embedded import EmbeddedFeatureStore, load_feature_tables
from online.backends.feast_http import FeastHttpFeatureStore
from online.backends.feast_redis import FeastRedisFeatureStore
from online.backends.feature_files import FeatureFilesStore
from online.backends.local_index import LocalItemIndex
from online.backends.onnx_scorer import OnnxScorer
from online.main.s1_server import create_app, service_of
from scripts.native_servers import RedisServer, TritonServer, TritonVenv, free_port, tail
from tests.fixtures_artifacts import TinyArtifacts
from tests.online_support import expected_list, publish_tiny

pytestmark = pytest.mark.integration
RESILIENCE = {
    "breaker_failures": 2,
    "breaker_reset_s": 0.3,
    "backend_timeout_ms": 200,
    "log_level": "WARNING",
    "event_store": "sqlite",
}  # fmt: skip  (the event log has its own tests)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return publish_tiny(tmp_path_factory.mktemp("published"))


def compose_app(settings: Settings, **backends: Any) -> Flask:
    app = create_app(settings, backends=backends)
    service_of(app).wait_until_loaded(120)
    return app


def recommend(app: Flask, userid: int, size: int = 10) -> dict[str, Any]:
    reply = app.test_client().post("/ml/rec", json={"userid": userid, "size": size})
    assert reply.status_code == 200, reply.get_json()
    return dict(reply.get_json())


def wait_for(app: Flask, userid: int, done: Callable[[dict[str, Any]], bool], timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = recommend(app, userid)
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def items_of(body: dict[str, Any]) -> list[int]:
    return [entry["itemid"] for entry in body["item_list"]]


def test_redis_profiles_survive_a_killed_redis(tiny: TinyArtifacts) -> None:
    from offline_to_online.recall import s1_user_to_redis

    data_dir = tiny.paths.data_dir
    with RedisServer() as server:
        args = ["--data-dir", str(data_dir), "--profile", "compose", "--redis-url", server.url, "--quiet"]
        assert s1_user_to_redis.main(args) == 0
        settings = load_settings({"data_dir": data_dir, "profile": "compose", "redis_url": server.url, **RESILIENCE})
        app = compose_app(
            settings,
            index=LocalItemIndex(settings),
            features=EmbeddedFeatureStore(settings),
            scorer=OnnxScorer(settings),
        )
        userid = int(tiny.userids[5])
        healthy = recommend(app, userid)
        assert healthy["degraded"] == [] and items_of(healthy) == expected_list(tiny.paths, userid, 10)[0].tolist()
        assert healthy["versions"]["users"] == s1_user_to_redis_version(server.url)

        server.kill()
        for _ in range(5):
            started = time.perf_counter()
            body = recommend(app, userid)
            assert body["degraded"] == ["profile"] and len(body["item_list"]) == 10
            assert time.perf_counter() - started < 1.0
        ready = app.test_client().get("/ready")  # popularity answers: ready, the role degraded
        assert ready.status_code == 200 and ready.get_json()["degraded"] == ["profile"]
        strict = compose_app(settings.model_copy(update={"ready_strict": True}), index=LocalItemIndex(settings),
                             features=EmbeddedFeatureStore(settings), scorer=OnnxScorer(settings))  # fmt: skip
        assert strict.test_client().get("/ready").status_code == 503

        server.start()
        recovered = wait_for(app, userid, lambda b: b["degraded"] == [])
        assert recovered["degraded"] == [] and items_of(recovered) == items_of(healthy)

        assert s1_user_to_redis.main(args) == 0  # a new version: the pointer moves, the server follows
        switched = wait_for(app, userid, lambda b: b["versions"]["users"] != healthy["versions"]["users"], 10)
        assert switched["versions"]["users"] == s1_user_to_redis_version(server.url)


def s1_user_to_redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.get(b"recsys:users:current").decode())  # type: ignore[union-attr]
    finally:
        client.close()


def test_triton_scorer_falls_back_to_onnx_when_triton_dies(tiny: TinyArtifacts, triton_venv: TritonVenv) -> None:
    with TritonServer(python_model_repository_dir(tiny.paths), venv=triton_venv.root) as server:
        overrides = {"data_dir": tiny.paths.data_dir, "profile": "compose", "triton_url": server.grpc_url}
        settings = load_settings({**overrides, **RESILIENCE})
        app = compose_app(
            settings,
            profiles=EmbeddedProfileStore(settings),
            index=LocalItemIndex(settings),
            features=EmbeddedFeatureStore(settings),
        )
        userid = int(tiny.userids[8])
        want_items, want_scores = expected_list(tiny.paths, userid, 10)
        healthy = recommend(app, userid)
        assert healthy["degraded"] == [] and healthy["versions"]["model"] == "ml_rec/1"
        assert items_of(healthy) == want_items.tolist()
        np.testing.assert_allclose([e["score"] for e in healthy["item_list"]], want_scores, atol=1e-5)

        server.kill()
        for _ in range(4):
            body = recommend(app, userid)
            assert body["degraded"] == ["scorer"] and body["versions"]["model"] == "ml_rec/1"  # ONNX fallback
            assert items_of(body) == want_items.tolist()
        ready = app.test_client().get("/ready")
        assert ready.status_code == 200 and ready.get_json()["backends"]["scorer"]["ready"] is False
        assert ready.get_json()["degraded"] == ["scorer"]

        server.start()
        recovered = wait_for(app, userid, lambda b: b["degraded"] == [], 30)
        assert recovered["degraded"] == [] and items_of(recovered) == want_items.tolist()


@pytest.fixture()
def feast_server(tiny: TinyArtifacts) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log_path = tiny.paths.data_dir / "feast-serve.log"
    repo = tiny.paths.feature_repo_dir
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["feast", "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", proc, log_path)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"feast serve exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"feast serve not healthy after {timeout_s} s:\n{tail(log_path)}")


def test_feast_feature_server_rows_equal_the_sdk_and_survive_its_death(
    tiny: TinyArtifacts, feast_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = feast_server
    settings = load_settings({"data_dir": tiny.paths.data_dir, "profile": "compose", "feast_url": url, **RESILIENCE})
    store = FeastHttpFeatureStore(settings)
    store.items.check_interval_s = 0.0
    store.maybe_refresh()
    deadline = time.monotonic() + 30
    while not store.items.loaded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.items.loaded, "the item features were not loaded from feast serve within 30 s"
    sdk = load_feature_tables(tiny.paths.feature_repo_dir)
    snapshot = store.current()
    for userid in tiny.userids.tolist():  # every user row over HTTP == the SDK's, encoded
        got, want = store.user_row(snapshot, userid, 5.0), sdk.user_row(userid)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    for part_got, part_want in zip(snapshot.item_rows(tiny.itemids), sdk.item_rows(tiny.itemids), strict=True):
        np.testing.assert_array_equal(part_got, part_want)

    app = compose_app(
        settings,
        profiles=EmbeddedProfileStore(settings),
        index=LocalItemIndex(settings),
        features=store,
        scorer=OnnxScorer(settings),
    )
    userid = int(tiny.userids[5])
    healthy = recommend(app, userid)
    assert healthy["degraded"] == [] and items_of(healthy) == expected_list(tiny.paths, userid, 10)[0].tolist()
    proc.terminate()
    proc.wait(timeout=30)
    body = recommend(app, userid)
    assert body["degraded"] == ["features"] and items_of(body) == items_of(healthy)  # the cached row


def load_now(store: Any, timeout_s: float = 60) -> None:
    """Run a store's version checks until its snapshots are loaded (what the service's thread does)."""
    for refreshing in store.snapshots():
        refreshing.check_interval_s = 0.0
    deadline = time.monotonic() + timeout_s
    while not all(r.loaded for r in store.snapshots()):
        assert time.monotonic() < deadline, [r.last_error for r in store.snapshots()]
        store.maybe_refresh()
        time.sleep(0.05)


def sdk_rows(repo: Path, spec: Any, source: str, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """What Feast's SDK (get_online_features on the repository's Redis store) serves, encoded."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    key = "userid" if source == "user" else "itemid"
    service = store.get_feature_service(f"{source}_features")
    frame = pd.DataFrame(store.get_online_features(features=service, entity_rows=[{key: i} for i in ids]).to_dict())
    return spec.encode(frame[spec.source_columns(source)], source)  # type: ignore[no-any-return]


def test_feast_redis_rows_equal_feast_and_fall_back_to_the_repository_files(tmp_path: Path) -> None:
    from offline_to_online.rank import s1_feature_to_feast

    tiny = publish_tiny(tmp_path / "data")
    data_dir = tiny.paths.data_dir
    with RedisServer() as server:
        args = ["--data-dir", str(data_dir), "--profile", "compose", "--quiet"]
        assert s1_feature_to_feast.main([*args, "--redis-url", server.url, "--server-redis-url", server.url]) == 0
        settings = load_settings({"data_dir": data_dir, "profile": "compose", "redis_url": server.url, **RESILIENCE})
        store, files = FeastRedisFeatureStore(settings), FeatureFilesStore(settings)
        load_now(store)
        load_now(files)
        snapshot, published = store.current(), files.current()
        assert snapshot.version == published.version
        users, items = tiny.userids.tolist() + [10**9], tiny.itemids.tolist() + [10**9]  # + unknown ids
        want_sparse, want_dense = sdk_rows(tiny.paths.feature_repo_dir, tiny.spec, "user", users)
        for row, userid in enumerate(users):  # every user over Redis == Feast's SDK == the repository files
            for got in (store.user_row(snapshot, userid, 1.0), files.user_row(published, userid, 0.0)):
                np.testing.assert_array_equal(got[0][0], want_sparse[row])
                np.testing.assert_array_equal(got[1][0], want_dense[row])
        want_items = sdk_rows(tiny.paths.feature_repo_dir, tiny.spec, "item", items)
        for got in (snapshot.item_rows(np.array(items)), published.item_rows(np.array(items))):
            np.testing.assert_array_equal(got[0], want_items[0])
            np.testing.assert_array_equal(got[1], want_items[1])

        app = compose_app(settings, profiles=EmbeddedProfileStore(settings), index=LocalItemIndex(settings),
                          scorer=OnnxScorer(settings))  # fmt: skip
        userid = int(tiny.userids[5])
        healthy = recommend(app, userid)
        assert healthy["degraded"] == [] and items_of(healthy) == expected_list(tiny.paths, userid, 10)[0].tolist()
        server.kill()
        for _ in range(4):
            started = time.perf_counter()
            body = recommend(app, userid)
            assert body["degraded"] == ["features"] and items_of(body) == items_of(healthy)  # the published row
            assert time.perf_counter() - started < 0.5
        server.start()
        recovered = wait_for(app, userid, lambda b: b["degraded"] == [], 10)
        assert recovered["degraded"] == [] and items_of(recovered) == items_of(healthy)
