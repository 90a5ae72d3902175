"""The vector model's user side at request time: published with the item version, run by the scorer role.

Tiny artifacts plus a tiny user tower (``tests.fixtures_artifacts.write_tiny_user_tower``: an ONNX graph
whose numpy twin gives the vector the service must use). The embedded app computes each user's vector
from the recent items it serves from (published profile and live events); Triton (a real tritonserver,
Python backend) serves the same file as ``ml_user_tower`` at the version the item version names.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from data_exchange_center import model_signature as sig
from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import sha256_of, write_json, write_npz
from data_exchange_center.events import apply_events
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import load_settings
from offline_to_online.common import PublishVerificationError
from offline_to_online.rank.stages import check_offline_and_online
from offline_to_online.recall import s2_item_to_es
from online.backends.triton_scorer import TritonScorer
from online.backends.user_tower import UserTowers
from online.main.s1_server import create_app, service_of
from scripts.native_servers import TritonServer, TritonVenv
from tests import online_support
from tests.fixtures_artifacts import TinyArtifacts, TinyUserTower, write_tiny_user_tower
from tests.online_support import copy_published, expected_list, publish_tiny, user_state

pytestmark = pytest.mark.integration
TOWER: dict[str, TinyUserTower] = {}


POLICY = dataclasses.replace(online_support.POLICY, vector_weight=1.0)  # the vector score counts in the final score


def add_tower(paths: ArtifactPaths) -> None:
    TOWER[str(paths.data_dir)] = write_tiny_user_tower(paths)
    write_json(POLICY.to_dict(), paths.ranking_policy_path)


def expected(tiny: TinyArtifacts, userid: int, state: Any = None, size: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return expected_list(tiny.paths, userid, size, state, POLICY)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return publish_tiny(tmp_path_factory.mktemp("published"), before_publish=add_tower)


@pytest.fixture(scope="module")
def tower(tiny: TinyArtifacts) -> TinyUserTower:
    return TOWER[str(tiny.paths.data_dir)]


@pytest.fixture
def app(tiny: TinyArtifacts, tmp_path: Path) -> Iterator[Flask]:
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "data")  # its own event log
    app = create_app(load_settings({"data_dir": data_dir, "log_level": "WARNING"}))
    service_of(app).wait_until_loaded(120)
    yield app
    service_of(app).close()


def rec(app: Flask, userid: int, size: int = 10) -> dict[str, Any]:
    response = app.test_client().post("/ml/rec", json={"userid": userid, "size": size, "fields": []})
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data())


def items_of(body: dict[str, Any]) -> list[int]:
    return [entry["itemid"] for entry in body["item_list"]]


def test_the_item_version_carries_the_tower_and_triton_gets_a_version_per_publish(tiny: TinyArtifacts) -> None:
    version_dir = L.current_version_dir(L.items_store_dir(tiny.paths))
    assert version_dir is not None
    args = L.read_user_tower_args(version_dir)
    assert args == L.UserTowerArgs(window=4, dim=8, triton_version=1)
    manifest = L.verify_version_files(version_dir)
    files = manifest["files"]
    assert isinstance(files, dict) and {L.USER_TOWER_FILE, L.USER_TOWER_ARGS_FILE} <= set(files)
    python_repo = L.python_model_repository_dir(tiny.paths)
    for repo in (tiny.paths.model_repository_dir, python_repo):
        assert (repo / sig.USER_TOWER_NAME / "1" / "model.onnx").read_bytes() == (
            version_dir / L.USER_TOWER_FILE
        ).read_bytes()
        config = (repo / sig.USER_TOWER_NAME / "config.pbtxt").read_text()
        assert f'name: "{sig.USER_TOWER_NAME}"' in config and "dims: [ 4 ]" in config and "dims: [ 8 ]" in config
    assert (python_repo / sig.USER_TOWER_NAME / "1" / "model.py").exists()


def test_republishing_numbers_the_triton_versions_and_keeps_the_last_three(tiny: TinyArtifacts, tmp_path: Path) -> None:
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "data")
    paths = ArtifactPaths(data_dir)
    for _ in range(4):
        assert s2_item_to_es.main(["--data-dir", str(data_dir), "--profile", "embedded", "--quiet"]) == 0
    version_dir = L.current_version_dir(L.items_store_dir(paths))
    assert version_dir is not None
    assert L.read_user_tower_args(version_dir) == L.UserTowerArgs(4, 8, 5)
    for repo in (paths.model_repository_dir, L.python_model_repository_dir(paths)):
        assert L.model_versions(repo, sig.USER_TOWER_NAME) == [3, 4, 5]
        assert L.model_versions(repo) == L.model_versions(tiny.paths.model_repository_dir)  # the ranker untouched


def test_a_publish_that_fails_verification_writes_no_triton_version(tiny: TinyArtifacts, tmp_path: Path) -> None:
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "data")
    paths = ArtifactPaths(data_dir)
    before = L.model_versions(paths.model_repository_dir, sig.USER_TOWER_NAME)
    args = json.loads(paths.user_tower_args_path.read_text())
    write_json({**args, "dim": int(args["dim"]) + 3}, paths.user_tower_args_path)  # not the item vectors' width
    assert s2_item_to_es.main(["--data-dir", str(data_dir), "--profile", "embedded", "--quiet"]) != 0
    for repo in (paths.model_repository_dir, L.python_model_repository_dir(paths)):
        assert L.model_versions(repo, sig.USER_TOWER_NAME) == before  # no orphan version of a version never staged


def test_a_known_users_vector_is_computed_from_the_recent_items_it_is_served_with(
    app: Flask, tiny: TinyArtifacts, tower: TinyUserTower
) -> None:
    differs = 0
    for userid in tiny.userids[:12].tolist():
        published = user_state(tiny.paths, userid)
        if not len(published.seen):
            continue
        now = dataclasses.replace(published, vector=tower.vector(published.seen, published.seen_labels))
        body = rec(app, userid)
        assert "user_vector" in body["timings_ms"] and body["degraded"] == []
        want_items, want_scores = expected(tiny, userid, now)
        assert items_of(body) == want_items.tolist()
        np.testing.assert_allclose([e["score"] for e in body["item_list"]], want_scores, atol=2e-6)
        differs += items_of(body) != expected(tiny, userid)[0].tolist()
    assert differs > 0  # the published vectors give other lists: the test tells the two apart


def post_likes(app: Flask, tiny: TinyArtifacts, tower: TinyUserTower, userid: int, n: int) -> tuple[Any, Any]:
    """Post ``n`` unseen items rated 5 for ``userid``; the published state, and the state (with the tower's
    vector of the new history) that the service must serve from after the events."""
    published = user_state(tiny.paths, userid)
    unseen = np.setdiff1d(tiny.itemids, published.seen)[:n]
    events = [{"userid": userid, "itemid": int(item), "rating": 5.0, "timestamp": 1_000 + i,
               "event_id": f"like-{userid}-{i}"} for i, item in enumerate(unseen.tolist())]  # fmt: skip
    assert app.test_client().post("/ml/events", json=events).status_code == 202
    after = apply_events(published, unseen, np.ones(len(unseen), np.int8), np.full(len(unseen), 5.0))
    return published, dataclasses.replace(after, vector=tower.vector(after.seen, after.seen_labels))


def test_events_move_the_vector_channel(app: Flask, tiny: TinyArtifacts, tower: TinyUserTower) -> None:
    userid = int(tiny.userids[3])
    published, after = post_likes(app, tiny, tower, userid, 3)
    served = expected_list(tiny.paths, userid, 10, after, POLICY, live_history=True)[0].tolist()
    assert items_of(rec(app, userid)) == served
    stale = dataclasses.replace(after, vector=tower.vector(published.seen, published.seen_labels))
    assert served != expected_list(tiny.paths, userid, 10, stale, POLICY, live_history=True)[0].tolist()


def test_a_failing_scorer_keeps_the_published_vector_and_says_so(tiny: TinyArtifacts, tmp_path: Path) -> None:
    class TowerlessScorer:  # the local scorer, but its user side fails
        def __init__(self, inner: Any) -> None:
            self.inner, self.name = inner, "onnxruntime"

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def user_vector(self, *args: Any) -> Any:
            raise RuntimeError("user tower down")

    from online.backends.onnx_scorer import OnnxScorer

    settings = load_settings({"data_dir": copy_published(tiny.paths.data_dir, tmp_path / "d"), "log_level": "WARNING"})
    app = create_app(settings, backends={"scorer": TowerlessScorer(OnnxScorer(settings))})
    service_of(app).wait_until_loaded(120)
    try:
        userid = int(tiny.userids[5])
        body = rec(app, userid)
        assert body["degraded"] == ["scorer"]
        assert items_of(body) == expected(tiny, userid)[0].tolist()  # the published vector
    finally:
        service_of(app).close()


def publish_the_towers_vectors(paths: ArtifactPaths) -> None:
    """What the vector stage writes: the users' vectors by the tower, with the tower file's SHA-256."""
    add_tower(paths)
    tower = TOWER[str(paths.data_dir)]
    seen = pd.read_parquet(paths.user_seen_path)
    seen = seen[seen[S.ITEMS].map(len) > 0]
    vectors = np.stack([tower.vector(np.asarray(i), np.asarray(lab)) for i, lab in zip(seen[S.ITEMS], seen[S.LABELS],
                                                                                       strict=True)])  # fmt: skip
    write_npz(paths.user_vectors_path, **{S.VECTOR_IDS: seen[S.USER_ID].to_numpy(np.int64), S.VECTORS: vectors,
                                          S.VECTOR_TOWER: np.array(sha256_of(paths.user_tower_onnx_path))})  # fmt: skip


class CountingScorer:
    """The local scorer, counting the user tower's runs."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.tower_runs = inner, inner.name, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def user_vector(self, *args: Any) -> Any:
        self.tower_runs += 1
        return self.inner.user_vector(*args)


def test_the_tower_runs_only_for_a_history_its_published_vector_does_not_describe(tmp_path: Path) -> None:
    from online.backends.onnx_scorer import OnnxScorer

    tiny = publish_tiny(tmp_path / "published", before_publish=publish_the_towers_vectors)
    tower = TOWER[str(tiny.paths.data_dir)]
    settings = load_settings({"data_dir": tiny.paths.data_dir, "log_level": "WARNING"})
    scorer = CountingScorer(OnnxScorer(settings))
    app = create_app(settings, backends={"scorer": scorer})
    service_of(app).wait_until_loaded(120)
    try:
        users = [u for u in tiny.userids[:12].tolist() if len(user_state(tiny.paths, u).seen)]
        for userid in users:
            body = rec(app, userid)
            assert body["degraded"] == [] and items_of(body) == expected(tiny, userid)[0].tolist()
        assert scorer.tower_runs == 0  # the published vectors are the tower's own on these histories

        userid = users[0]
        _, after = post_likes(app, tiny, tower, userid, 2)
        assert items_of(rec(app, userid)) == expected_list(tiny.paths, userid, 10, after, POLICY,
                                                           live_history=True)[0].tolist()  # fmt: skip
        assert scorer.tower_runs == 1  # the events changed the history: the tower ran for it
    finally:
        service_of(app).close()


def test_the_check_compares_the_tower_with_pytorch_and_fails_on_a_difference(
    tiny: TinyArtifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "data")
    paths = ArtifactPaths(data_dir)
    results = check_offline_and_online(load_settings({"data_dir": data_dir}))
    names = [r.backend.split(" (")[0] for r in results]
    assert names == ["onnxruntime", "onnxruntime", "history features"] and all(r.ok for r in results)
    assert results[1].max_abs_diff < 1e-5 and "reference_vectors" in capsys.readouterr().out
    reference = pd.read_parquet(paths.user_tower_reference_path)
    reference.at[2, "vectors"] = reference.at[2, "vectors"] + np.float32(1e-3)
    reference.to_parquet(paths.user_tower_reference_path)
    with pytest.raises(PublishVerificationError, match=r"items .*\) differs from PyTorch's by more than 0.0001"):
        check_offline_and_online(load_settings({"data_dir": data_dir}))


def test_triton_serves_the_version_the_item_version_names(tiny: TinyArtifacts, triton_venv: TritonVenv) -> None:
    settings = load_settings({"data_dir": tiny.paths.data_dir})
    towers = UserTowers(settings)
    version = L.read_current_version(L.items_store_dir(tiny.paths))
    assert version is not None
    deadline = time.monotonic() + 60
    while not towers.snapshot.loaded and time.monotonic() < deadline:
        towers.maybe_refresh()  # the version check starts a background load
        time.sleep(0.05)
    user_tower = towers.tower_for(version)
    assert user_tower is not None
    published = user_state(tiny.paths, int(tiny.userids[1]))
    items, liked = user_tower.encode(published)
    with TritonServer(L.python_model_repository_dir(tiny.paths), venv=triton_venv.root) as server:
        assert server.model_ready(sig.USER_TOWER_NAME, "1")
        scorer = TritonScorer(load_settings({"data_dir": tiny.paths.data_dir, "triton_url": server.grpc_url}))
        vectors, served_by = scorer.user_vector(user_tower, items, liked, 5.0)
        assert served_by == f"{sig.USER_TOWER_NAME}/1"
        np.testing.assert_allclose(vectors[0], tower_vector(tiny, published), atol=1e-5)
        results = check_offline_and_online(settings, triton_url=server.grpc_url)
        assert f"triton grpc {sig.USER_TOWER_NAME}/1" in [r.backend for r in results] and all(r.ok for r in results)
        moved = dataclasses.replace(user_tower, args=L.UserTowerArgs(4, 8, 9))  # a version Triton does not hold
        with pytest.raises(Exception, match="9"):
            scorer.user_vector(moved, items, liked, 5.0)
        scorer.close()


def tower_vector(tiny: TinyArtifacts, state: Any) -> np.ndarray:
    return TOWER[str(tiny.paths.data_dir)].vector(state.seen, state.seen_labels)
