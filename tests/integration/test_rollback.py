"""Rollback against real servers, under load, and killed with SIGKILL.

What these tests prove:
- the running service follows a rollback of users, items, features and model without one failed
  request (threads keep calling ``POST /ml/rec`` throughout), and then answers from the target versions;
- on a real Redis, the online profile store reads the previous users version after a rollback while
  being read continuously, with no error;
- Feast serves the previous version's feature values after a features rollback (registry tag and rows);
- ``s4_rollback`` killed with SIGKILL at any moment leaves every pointer on a complete version and
  every version in place, and the next run finishes the switch.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_json, write_parquet
from data_exchange_center.settings import load_settings
from offline_to_online.rank.stages import feature_to_feast, model_to_triton
from offline_to_online.recall.embedded_items import publish_items_embedded
from offline_to_online.recall.item_source import chain_parameters
from offline_to_online.recall.redis_users import publish_users_to_redis
from offline_to_online.recall.stages import user_to_redis
from offline_to_online.recall.user_source import load_user_source
from offline_to_online.rollback import journal_path, rollback
from online.backends.redis_profiles import RedisProfileStore
from online.main.s1_server import create_app, service_of
from scripts.native_servers import RedisServer
from tests.fixtures_artifacts import write_tiny_artifacts
from tests.online_support import publish_tiny

pytestmark = pytest.mark.integration
REPO_DIR = Path(__file__).resolve().parents[2]


class Load:
    """Threads that call ``work`` until stopped, counting failures (any exception or a bad answer)."""

    def __init__(self, work: Callable[[], Any], n_threads: int = 4) -> None:
        self.work, self.answers, self.failures = work, [], []  # type: ignore[var-annotated]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(n_threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(self.work())
            except Exception as exc:  # a failed request, whatever the cause
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_the_service_follows_a_rollback_of_every_component_under_load(tmp_path: Path) -> None:
    tiny = publish_tiny(tmp_path)
    settings = load_settings({"data_dir": tmp_path, "profile": "embedded"}, environ={})
    users = pd.read_parquet(tiny.paths.user_features_path)
    first = {"users": L.read_current_version(L.users_store_dir(tiny.paths)),
             "items": L.read_current_version(L.items_store_dir(tiny.paths)), "model": "ml_rec/1"}  # fmt: skip
    feast_first = rollback_target_of_features(tmp_path)
    # a second publish of everything (features with other values), then the service starts on it
    user_to_redis(settings, progress=False)
    publish_items_embedded(tiny.paths, chain_parameters(tiny.paths))
    write_parquet(users.assign(**{S.HIST_N: users[S.HIST_N] + 1000.0}), tiny.paths.user_features_path)
    feature_to_feast(settings)
    model_to_triton(settings)
    # budgets widened for a shared 2-core test machine: what is checked is that the switches fail nothing
    app = create_app(load_settings({"data_dir": tmp_path, "log_level": "WARNING", "request_timeout_ms": 2000,
                                    "backend_timeout_ms": 1000}, environ={}))  # fmt: skip
    service_of(app).wait_until_loaded(120)
    userid = int(tiny.userids[5])

    def recommend() -> dict[str, Any]:
        reply = app.test_client().post("/ml/rec", json={"userid": userid, "size": 10})
        if reply.status_code != 200 or reply.get_json()["degraded"]:
            raise AssertionError(f"{reply.status_code} {reply.get_json()}")
        return dict(reply.get_json()["versions"])

    try:
        with Load(recommend) as load:
            assert wait_for(lambda: len(load.answers) > 20)
            second = dict(load.answers[-1])
            assert all(second[k] != first[k] for k in first)
            for component in ("users", "items", "model", "features"):  # as an operator runs it: its own process
                command = [sys.executable, "-m", "offline_to_online.s4_rollback", "--component", component,
                           "--data-dir", str(tmp_path), "--profile", "embedded", "--quiet"]  # fmt: skip
                env = os.environ | {"PYTHONPATH": str(REPO_DIR)}
                assert subprocess.run(command, env=env, cwd=REPO_DIR, check=False).returncode == 0, component
            expected = {**first, "features": feast_first}
            assert wait_for(lambda: all(load.answers[-1][k] == v for k, v in expected.items()), 30), load.answers[-1]
            n_after = len(load.answers)
            assert wait_for(lambda: len(load.answers) > n_after + 20)
        assert load.failures == [] and len(load.answers) > 50
    finally:
        service_of(app).close()


def rollback_target_of_features(data_dir: Path) -> str:
    versions = L.list_versions(L.feature_versions_dir(load_settings({"data_dir": data_dir}).paths.feature_repo_dir))
    assert len(versions) == 1
    return versions[0]


def test_feast_serves_the_previous_values_after_a_features_rollback(tmp_path: Path) -> None:
    from feast import FeatureStore

    tiny = write_tiny_artifacts(tmp_path)
    settings = load_settings({"data_dir": tmp_path, "profile": "embedded"}, environ={})
    users = pd.read_parquet(tiny.paths.user_features_path)
    first = feature_to_feast(settings)
    write_parquet(users.assign(**{S.HIST_N: 4242.0}), tiny.paths.user_features_path)
    second = feature_to_feast(settings)
    ids = users[S.USER_ID].tolist()[:5]

    def served() -> list[float]:
        store = FeatureStore(repo_path=str(tiny.paths.feature_repo_dir))
        rows = store.get_online_features(features=store.get_feature_service(L.USER_FEATURE_SERVICE),
                                         entity_rows=[{S.USER_ID: i} for i in ids]).to_dict()  # fmt: skip
        return [float(v) for v in rows[S.HIST_N]]

    assert served() == [4242.0] * 5
    report = rollback(settings, "features")
    assert report.target == first.version and report.before == {"feast registry": second.version}
    assert served() == users[S.HIST_N].head(5).astype(float).tolist()
    assert rollback(settings, "features", to=second.version).target == second.version
    assert served() == [4242.0] * 5


def test_redis_users_roll_back_under_load(tmp_path: Path, redis_server: RedisServer) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings({"data_dir": tmp_path, "profile": "compose", "redis_url": redis_server.url,
                              "redis_namespace": namespace, "backend_timeout_ms": 1000}, environ={})  # fmt: skip
    client = __import__("redis").Redis.from_url(redis_server.url)
    source = load_user_source(tiny.paths)
    first = publish_users_to_redis(client, source, namespace, progress=False)
    second = publish_users_to_redis(client, source, namespace, progress=False)
    store = RedisProfileStore(settings)
    store.maybe_refresh()  # the service reads the pointer before it is ready
    userids = [int(u) for u in tiny.userids[:10]]

    def read() -> str:
        store.maybe_refresh()  # what the service's background version thread does between requests
        state, version = store.fetch(random.choice(userids), 1.0)
        if state is None:
            raise AssertionError(f"a published user was not found in version {version}")
        return version

    with Load(read) as load:
        assert wait_for(lambda: len(load.answers) > 100)
        assert load.answers[-1] == second.version
        report = rollback(settings, "users")
        assert report.target == first.version and report.before == {"redis users": second.version}
        assert wait_for(lambda: load.answers[-1] == first.version, 15)
        n_after = len(load.answers)
        assert wait_for(lambda: len(load.answers) > n_after + 100)
    assert load.failures == [] and set(load.answers[n_after:]) == {first.version}
    store.close()


def test_a_rollback_killed_at_any_moment_loses_nothing_and_is_finished_by_the_next_run(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path)
    settings = load_settings({"data_dir": tmp_path, "profile": "embedded"}, environ={})
    for _ in range(2):
        model_to_triton(settings)
    repos = [settings.paths.model_repository_dir, L.python_model_repository_dir(settings.paths)]
    folders = {r: L.model_versions(r) for r in repos}
    command = [sys.executable, "-m", "offline_to_online.s4_rollback", "--component", "model", "--quiet",
               "--data-dir", str(tmp_path)]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO_DIR)}
    started = time.monotonic()
    assert subprocess.run([*command, "--to", "1"], env=env, cwd=REPO_DIR, check=False).returncode == 0
    duration = time.monotonic() - started
    rng = random.Random(7)
    target = "2"
    for attempt in range(8):
        proc = subprocess.Popen([*command, "--to", target], env=env, cwd=REPO_DIR)
        time.sleep(rng.uniform(0.5, 1.0) * duration)  # mostly late in the run, where the switches are
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        served = [L.served_model_version(r) for r in repos]
        for repo in repos:  # every config is whole and names a version that is there; nothing was deleted
            config = (repo / "ml_rec" / "config.pbtxt").read_text()
            assert config.count("version_policy:") == 1 and "max_batch_size" in config, attempt
            assert L.model_versions(repo) == folders[repo]  # (a killed write may leave a dot-temp file)
        journal = journal_path(settings, "model")
        if served[0] != served[1]:
            assert journal.exists() and read_json(journal)["target"] == target, (attempt, served)
        target = "1" if target == "2" else "2"
    finished = subprocess.run([*command, "--to", "1"], env=env, cwd=REPO_DIR, check=False)
    assert finished.returncode == 0
    assert [L.served_model_version(r) for r in repos] == [1, 1] and not journal_path(settings, "model").exists()
    assert np.array_equal(L.model_versions(repos[0]), [1, 2])
    assert not [p for r in repos for p in (r / "ml_rec").glob(".config.pbtxt.*")]  # the last run cleaned up


def test_triton_in_poll_mode_follows_a_model_rollback_under_load(tmp_path: Path, triton_venv: object) -> None:
    from online.backends.triton_scorer import TritonScorer
    from scripts.native_servers import TritonServer

    tiny = write_tiny_artifacts(tmp_path)
    settings = load_settings({"data_dir": tmp_path, "profile": "embedded"}, environ={})
    for _ in range(2):
        model_to_triton(settings)
    repo = L.python_model_repository_dir(tiny.paths)
    poll = ["--model-control-mode=poll", "--repository-poll-secs=1"]  # as the compose Triton (15 s there)
    with TritonServer(repo, venv=triton_venv.root, extra_args=poll) as server:
        scorer = TritonScorer(load_settings({"triton_url": server.grpc_url}, environ={}))
        n_sparse, n_dense = len(tiny.spec.categorical), len(tiny.spec.dense)
        sparse, dense = np.zeros((8, n_sparse), np.int64), np.zeros((8, n_dense), np.float32)

        def score() -> str:
            scores, version = scorer.score(sparse, dense, 5.0)
            assert scores.shape == (8,) and np.isfinite(scores).all()
            return version

        with Load(score, n_threads=2) as load:
            assert wait_for(lambda: len(load.answers) > 20) and load.answers[-1] == "ml_rec/2"
            report = rollback(settings, "model")
            assert report.target == "1"
            assert wait_for(lambda: load.answers[-1] == "ml_rec/1", 60), load.answers[-1]
            n_after = len(load.answers)
            assert wait_for(lambda: len(load.answers) > n_after + 20)
        assert load.failures == [] and set(load.answers[n_after:]) == {"ml_rec/1"}
