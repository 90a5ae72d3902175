"""The documented compose first run, through the Makefile, against native servers (Elasticsearch aside).

README's order is: stores up, ``make pipeline PROFILE=compose`` (offline + ``make publish``, no check),
``make up`` (Feast, Triton, the service), ``make check PROFILE=compose``. Here the stores are a real
Redis (``scripts/native_servers``), Elasticsearch is left out by configuration
(``RECSYS_INDEX_BACKEND=local``, which the item stage must skip with a log line, not fail on), and
Triton is the native ``tritonserver`` on the Python-backend repository that the same publish wrote.

What these tests prove: the Makefile's compose pipeline stops before the check; ``make publish``
succeeds with only Redis up and Elasticsearch not configured; ``make check`` fails while Triton is
down (the reason for the order) and passes once it is up; a stage whose backend is not configured is
skipped with one log line and exit 0.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from data_exchange_center import online_layout as L
from data_exchange_center import redis_layout as R
from offline_to_online.rank import s3_check_offline_and_online
from offline_to_online.recall import s1_user_to_redis, s2_item_to_es
from scripts.native_servers import RedisServer, TritonServer, free_port
from tests.fixtures_artifacts import write_tiny_artifacts

pytestmark = pytest.mark.integration
REPO_DIR = Path(__file__).resolve().parents[2]


def make(target: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """``make TARGET PROFILE=compose`` in the repository, with this environment's Python, no install."""
    args = ["make", "--no-print-directory", target, "PROFILE=compose", "SKIP_INSTALL=1", f"PYTHON={sys.executable}"]
    return subprocess.run([*args, *extra], cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=900)


def test_the_compose_pipeline_stops_before_the_check() -> None:
    dry = make("pipeline", os.environ | {"RECSYS_DATA_DIR": "/nonexistent"}, "-n")
    assert dry.returncode == 0, dry.stderr
    assert "offline_to_online.rank.s2_model_to_triton --profile compose" in dry.stdout
    assert "s3_check_offline_and_online" not in dry.stdout
    assert "make up" in dry.stdout and "make check PROFILE=compose" in dry.stdout
    embedded = subprocess.run(["make", "-n", "pipeline", "SKIP_INSTALL=1"], cwd=REPO_DIR, capture_output=True,
                              text=True, env=os.environ | {"RECSYS_DATA_DIR": "/nonexistent"})  # fmt: skip
    assert "s3_check_offline_and_online --profile embedded" in embedded.stdout  # embedded: no server to wait for


def test_publish_then_triton_then_check(tmp_path: Path, redis_server: RedisServer, triton_venv: object) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    env = os.environ | {
        "RECSYS_DATA_DIR": str(tmp_path),
        "RECSYS_REDIS_URL": redis_server.url,
        "RECSYS_REDIS_NAMESPACE": namespace,
        "RECSYS_INDEX_BACKEND": "local",  # no Elasticsearch here: the item stage must skip it
        "RECSYS_ES_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: a connection attempt would fail
        "RECSYS_TRITON_URL": f"127.0.0.1:{free_port()}",
    }
    published = make("publish", env)
    assert published.returncode == 0, published.stdout + published.stderr
    assert "elasticsearch skipped: the index role is served by 'local' (RECSYS_INDEX_BACKEND)" in published.stderr
    assert redis.Redis.from_url(redis_server.url).get(R.pointer_key(namespace)) is not None
    assert L.read_current_version(L.items_store_dir(tiny.paths)) is not None
    assert "type: redis" in (tiny.paths.feature_repo_dir / "feature_store.yaml").read_text()

    too_early = make("check", env)  # Triton is not up yet: this is why the check comes after `make up`
    assert too_early.returncode != 0 and "cannot reach Triton" in too_early.stderr

    with TritonServer(L.python_model_repository_dir(tiny.paths), venv=triton_venv.root) as triton:
        checked = make("check", env | {"RECSYS_TRITON_URL": triton.grpc_url})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"triton grpc {triton.grpc_url}" in checked.stdout


def test_stages_skip_a_role_that_is_not_served_by_their_backend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    closed = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RECSYS_PROFILES_BACKEND", "local")
    monkeypatch.setenv("RECSYS_INDEX_BACKEND", "local")
    monkeypatch.setenv("RECSYS_SCORER_BACKEND", "local")
    common = ["--data-dir", str(tmp_path), "--profile", "compose", "--quiet", "--connect-attempts", "1"]
    with caplog.at_level(logging.INFO, logger="offline_to_online"):
        assert s1_user_to_redis.main([*common, "--redis-url", f"redis://{closed}/0"]) == 0
        assert s2_item_to_es.main([*common, "--es-url", f"http://{closed}"]) == 0
        from offline_to_online.rank import s2_model_to_triton

        assert s2_model_to_triton.main(common) == 0
        monkeypatch.setenv("RECSYS_TRITON_URL", closed)
        assert s3_check_offline_and_online.main(common) == 0
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [m.split(":")[0] for m in skipped] == ["s1_user_to_redis", "s2_item_to_es", "s3_check_offline_and_online"]
    assert L.read_current_version(L.users_store_dir(tiny.paths)) is not None  # published in process instead
    assert L.read_current_version(L.items_store_dir(tiny.paths)) is not None
