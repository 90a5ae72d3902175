"""Ranking features through Feast, for real: SQLite in-process, the session's Redis, and `feast serve`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import schema as S
from data_exchange_center.artifacts import write_parquet
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.settings import load_settings
from offline_to_online.rank import s1_feature_to_feast
from offline_to_online.rank.stages import feature_to_feast
from scripts.native_servers import RedisServer, free_port, tail
from tests.fixtures_artifacts import write_tiny_artifacts

pytestmark = pytest.mark.integration


def online_frame(repo_dir: Path, service: str, key: str, ids: list[int]) -> pd.DataFrame:
    """What a reader of the generated repository gets (FeatureStore from its feature_store.yaml)."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo_dir))
    response = store.get_online_features(
        features=store.get_feature_service(service), entity_rows=[{key: i} for i in ids]
    )
    return pd.DataFrame(response.to_dict())


def assert_served_equal(repo_dir: Path, artifact: pd.DataFrame, spec: FeatureSpec, source: str) -> None:
    """Every entity, every spec column: the served value equals the artifact (encoded identically too)."""
    key = S.USER_ID if source == "user" else S.ITEM_ID
    served = online_frame(repo_dir, f"{source}_features", key, artifact[key].tolist())
    columns = spec.source_columns(source)  # type: ignore[arg-type]
    served = served[columns]
    expected = artifact[columns].reset_index(drop=True)
    got_sparse, got_dense = spec.encode(served, source)  # type: ignore[arg-type]
    want_sparse, want_dense = spec.encode(expected, source)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got_sparse, want_sparse)
    np.testing.assert_array_equal(got_dense, want_dense)


def test_sqlite_apply_materialize_read_back_and_republish(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    assert s1_feature_to_feast.main(["--data-dir", str(tmp_path), "--profile", "embedded", "--quiet"]) == 0
    repo = tiny.paths.feature_repo_dir
    assert (repo / "data" / "online_store.db").exists() and (repo / "data" / "registry.db").exists()
    users = pd.read_parquet(tiny.paths.user_features_path)
    assert_served_equal(repo, users, tiny.spec, "user")
    assert_served_equal(repo, pd.read_parquet(tiny.paths.item_features_path), tiny.spec, "item")

    users.loc[0, S.HIST_N] = 12345.0  # a new offline run changes a feature: the next publish serves it
    write_parquet(users, tiny.paths.user_features_path)
    settings = load_settings({"data_dir": tmp_path, "profile": "embedded"})
    report = feature_to_feast(settings)
    served = online_frame(repo, "user_features", S.USER_ID, [int(users.loc[0, S.USER_ID])])
    assert served.loc[0, S.HIST_N] == 12345.0 and report.n_verified == {"user_features": 40, "item_features": 30}


def test_redis_online_store_and_feast_serve(tmp_path: Path, redis_server: RedisServer) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    project = f"t{uuid.uuid4().hex[:8]}"
    args = ["--data-dir", str(tmp_path), "--profile", "compose", "--quiet", "--project", project]
    args += ["--redis-url", redis_server.url, "--server-redis-url", redis_server.url]
    assert s1_feature_to_feast.main(args) == 0
    repo = tiny.paths.feature_repo_dir
    assert "type: redis" in (repo / "feature_store.yaml").read_text()
    assert not (repo / "data" / "online_store.db").exists()
    users = pd.read_parquet(tiny.paths.user_features_path)
    assert_served_equal(repo, users, tiny.spec, "user")
    assert_served_equal(repo, pd.read_parquet(tiny.paths.item_features_path), tiny.spec, "item")
    served = query_feature_server(repo, "user_features", S.USER_ID, users[S.USER_ID].tolist()[:3])
    assert served[S.GENDER] == users[S.GENDER].tolist()[:3]
    assert served["imp_drama"] == users["imp_drama"].tolist()[:3]
    assert np.array(served[S.HIST_CLICK_RATE], np.float32).tolist() == users[S.HIST_CLICK_RATE].tolist()[:3]


def query_feature_server(repo: Path, service: str, key: str, ids: list[int]) -> dict[str, list[object]]:
    """Start `feast serve` on the generated repository and POST /get-online-features once."""
    port = free_port()
    log_path = repo.parent / "feast-serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["feast", "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}/health", proc, log_path)
            body = json.dumps({"feature_service": service, "entities": {key: ids}}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/get-online-features", data=body, headers={"Content-Type": "application/json"}
            )
            reply = json.loads(urllib.request.urlopen(request, timeout=10).read())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    names = reply["metadata"]["feature_names"]  # in no fixed order: read by name
    return {name: result["values"] for name, result in zip(names, reply["results"], strict=True)}


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"feast serve exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"feast serve not healthy after {timeout_s} s:\n{tail(log_path)}")


def test_a_spec_column_missing_from_the_artifacts_is_refused_before_writing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    items = pd.read_parquet(tiny.paths.item_features_path).drop(columns="genre_drama")
    write_parquet(items, tiny.paths.item_features_path)
    with caplog.at_level(logging.ERROR):
        assert s1_feature_to_feast.main(["--data-dir", str(tmp_path), "--profile", "embedded", "--quiet"]) == 2
    assert "lacks ['genre_drama'] required by the feature spec" in caplog.text
    assert not tiny.paths.feature_repo_dir.exists()


def test_unreachable_redis_is_one_line_and_exit_3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    url = f"redis://127.0.0.1:{free_port()}/0"
    args = ["--data-dir", str(tmp_path), "--profile", "compose", "--redis-url", url, "--connect-attempts", "1"]
    with caplog.at_level(logging.ERROR):
        assert s1_feature_to_feast.main(args) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"cannot reach Redis at {url}" in errors[0]
    assert not tiny.paths.feature_repo_dir.exists()
