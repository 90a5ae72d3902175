"""User profiles to a real Redis: publish, read back, re-run, an interrupted publish, bad input, no server."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import redis

from data_exchange_center import online_layout as L
from data_exchange_center import redis_layout as R
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_npz, write_npz
from data_exchange_center.settings import load_settings
from offline_to_online.recall import s1_user_to_redis
from offline_to_online.recall.redis_users import compare_records, publish_users_to_redis, read_live_user
from offline_to_online.recall.stages import user_to_redis
from offline_to_online.recall.user_source import load_user_source
from online.backends.embedded_profiles import load_user_table
from online.backends.redis_profiles import RedisProfileStore
from scripts.native_servers import REPO_ROOT, RedisServer, free_port
from tests.fixtures_artifacts import TinyConfig, write_tiny_artifacts

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def members(client: redis.Redis, key: bytes) -> set[bytes]:
    return cast(set[bytes], client.smembers(key))  # type: ignore[arg-type]


def namespace_keys(client: redis.Redis, namespace: str) -> set[bytes]:
    return set(client.scan_iter(match=f"{namespace}:*".encode(), count=1000))


def snapshot_version(client: redis.Redis, namespace: str, version: str) -> dict[bytes, dict[bytes, bytes]]:
    keys = sorted(client.scan_iter(match=R.version_match_pattern(namespace, version), count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def test_publish_reads_back_every_user_and_a_rerun_replaces_the_version(
    tmp_path: Path, client: redis.Redis, namespace: str
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    source = load_user_source(tiny.paths)
    first = publish_users_to_redis(client, source, namespace, progress=False)
    assert first.previous is None and first.n_users == len(tiny.userids)
    for position in range(source.n_users):
        expected = source.record(position)
        assert compare_records(expected, read_live_user(client, namespace, expected.userid)) is None
    meta = cast(dict[bytes, bytes], client.hgetall(R.meta_key(namespace, first.version)))  # type: ignore[arg-type]
    assert meta[b"state"] == b"complete" and int(meta[b"n_users"]) == source.n_users
    assert int(meta[b"vector_dim"]) == tiny.config.dim
    assert read_live_user(client, namespace, 999_999) is None

    second = publish_users_to_redis(client, source, namespace, progress=False)
    assert second.previous == first.version and second.deleted == {}  # the previous version stays
    third = publish_users_to_redis(client, source, namespace, progress=False)
    assert third.previous == second.version and third.deleted == {first.version: source.n_users + 1}
    keys = namespace_keys(client, namespace)
    assert not any(key.startswith(R.version_prefix(namespace, first.version)) for key in keys)
    assert len(keys) == 2 * (source.n_users + 1) + 2  # two versions' users + meta, pointer, versions set
    assert members(client, R.versions_key(namespace)) == {second.version.encode(), third.version.encode()}


def test_the_tower_that_made_the_vectors_reaches_both_profile_stores(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    arrays = read_npz(tiny.paths.user_vectors_path)
    tower = "ab" * 32
    write_npz(tiny.paths.user_vectors_path, **arrays, **{S.VECTOR_TOWER: np.array(tower)})
    common = ["--data-dir", str(tmp_path), "--quiet"]
    compose = ["--profile", "compose", "--redis-url", redis_server.url, "--namespace", namespace]
    assert s1_user_to_redis.main([*common, *compose]) == 0
    assert s1_user_to_redis.main([*common, "--profile", "embedded"]) == 0
    settings = load_settings({"data_dir": tmp_path, "redis_url": redis_server.url, "redis_namespace": namespace},
                             environ={})  # fmt: skip
    redis_store = RedisProfileStore(settings)
    redis_store.maybe_refresh()  # the service's background thread: the pointer and the version's tower
    userid = int(arrays[S.VECTOR_IDS][0])
    state, _ = redis_store.fetch(userid, 1.0)
    assert state is not None and state.vector is not None and state.vector_tower == tower
    redis_store.close()
    version_dir = L.current_version_dir(L.users_store_dir(tiny.paths))
    assert version_dir is not None
    state = load_user_table(version_dir, version_dir.name).lookup(userid)
    assert state is not None and state.vector is not None and state.vector_tower == tower

    write_npz(tiny.paths.user_vectors_path, **arrays)  # written before the vector stage stored its tower
    assert s1_user_to_redis.main([*common, *compose]) == 0
    redis_store = RedisProfileStore(settings)
    redis_store.maybe_refresh()
    state, _ = redis_store.fetch(userid, 1.0)
    assert state is not None and state.vector_tower is None  # unknown: the service runs the tower
    redis_store.close()
    write_npz(tiny.paths.user_vectors_path, **arrays, **{S.VECTOR_TOWER: np.array("not a digest")})
    with pytest.raises(ArtifactError, match="tower_sha256 must be a hex SHA-256"):
        load_user_source(tiny.paths)


def test_stage_command_publishes_to_redis_and_embedded(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    common = ["--data-dir", str(tmp_path), "--quiet"]
    compose = ["--profile", "compose", "--redis-url", redis_server.url, "--namespace", namespace]
    assert s1_user_to_redis.main([*common, *compose]) == 0
    client = redis.Redis.from_url(redis_server.url)
    assert client.get(R.pointer_key(namespace)) is not None
    assert s1_user_to_redis.main([*common, "--profile", "embedded"]) == 0
    assert (tiny.paths.online_dir / "users" / "CURRENT").exists()


def test_interrupted_publish_leaves_the_previous_version_serving(
    tmp_path: Path, client: redis.Redis, namespace: str, redis_server: RedisServer
) -> None:
    tiny = write_tiny_artifacts(tmp_path, TinyConfig(n_users=20_000, n_items=60, n_test=10, n_reference=10))
    source = load_user_source(tiny.paths)
    before = publish_users_to_redis(client, source, namespace, progress=False)
    snapshot = snapshot_version(client, namespace, before.version)
    assert len(snapshot) == source.n_users + 1

    cmd = [sys.executable, "-m", "offline_to_online.recall.s1_user_to_redis", "--profile", "compose", "--quiet"]
    cmd += [
        "--data-dir",
        str(tmp_path),
        "--redis-url",
        redis_server.url,
        "--namespace",
        namespace,
        "--batch-size",
        "20",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=os.environ | {"PYTHONPATH": str(REPO_ROOT)})
    try:
        interrupted = stop_when_half_written(client, namespace, before.version, source.userids, proc)
        assert interrupted is not None, "the publish ended before it could be interrupted"
        n_written = sum(1 for _ in client.scan_iter(match=R.version_match_pattern(namespace, interrupted), count=1000))
        assert 0 < n_written < source.n_users, n_written
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert client.get(R.pointer_key(namespace)) == before.version.encode()
    assert snapshot_version(client, namespace, before.version) == snapshot  # complete and unchanged
    assert compare_records(source.record(5), read_live_user(client, namespace, int(source.userids[5]))) is None

    after = publish_users_to_redis(client, source, namespace, progress=False)
    assert after.previous == before.version and set(after.deleted) == {interrupted}  # the previous one stays
    assert members(client, R.versions_key(namespace)) == {before.version.encode(), after.version.encode()}
    assert len(namespace_keys(client, namespace)) == 2 * (source.n_users + 1) + 2


def stop_when_half_written(
    client: redis.Redis, namespace: str, old: str, userids: np.ndarray, proc: subprocess.Popen[bytes]
) -> str | None:
    """SIGSTOP the publisher once the new version has its first user (users are written in id order)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for raw in members(client, R.versions_key(namespace)) - {old.encode()}:
            version = raw.decode()
            if client.exists(R.user_key(namespace, version, int(userids[0]))):
                proc.send_signal(signal.SIGSTOP)
                assert not client.exists(R.user_key(namespace, version, int(userids[-1])))
                return version
        time.sleep(0.001)
    return None


def test_mismatched_vectors_are_refused_before_anything_is_written(
    tmp_path: Path, redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    write_npz(tiny.paths.item_vectors_path, ids=tiny.itemids, vectors=np.zeros((len(tiny.itemids), 3), np.float32))
    args = ["--data-dir", str(tmp_path), "--profile", "compose", "--redis-url", redis_server.url]
    args += ["--namespace", namespace]
    with caplog.at_level(logging.ERROR):
        assert s1_user_to_redis.main(args) == 2
    assert "item vectors dim 3" in caplog.text
    assert namespace_keys(redis.Redis.from_url(redis_server.url), namespace) == set()
    assert s1_user_to_redis.main(["--data-dir", str(tmp_path), "--profile", "embedded"]) == 2
    assert not (tiny.paths.online_dir / "users").exists()


def test_unreachable_redis_is_one_line_and_exit_3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_tiny_artifacts(tmp_path)
    url = f"redis://127.0.0.1:{free_port()}/0"
    args = ["--data-dir", str(tmp_path), "--profile", "compose", "--redis-url", url, "--connect-attempts", "2"]
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert s1_user_to_redis.main(args) == 3
    assert time.monotonic() - started < 5
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"cannot reach Redis at {url}" in errors[0] and "RECSYS_REDIS_URL" in errors[0]
    assert "\n" not in errors[0]


def test_publish_waits_for_a_redis_that_is_still_starting(tmp_path: Path, namespace: str) -> None:
    write_tiny_artifacts(tmp_path)
    server = RedisServer(appendonly=False)
    overrides = {"data_dir": tmp_path, "profile": "compose", "redis_url": server.url, "redis_namespace": namespace}
    settings = load_settings(overrides)
    with ThreadPoolExecutor(1) as pool:
        try:
            publishing = pool.submit(user_to_redis, settings, progress=False)
            time.sleep(1.0)  # the publisher's first tries fail
            assert not publishing.done()
            server.start()  # from this thread: a server dies with the thread that started it
            assert publishing.result(timeout=30).n_users == 40
        finally:
            server.close()
