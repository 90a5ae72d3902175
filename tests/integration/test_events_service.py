"""POST /ml/events and live state on the embedded profile over tiny published artifacts (Flask test client).

Each test's app gets its own copy of the published data dir, so each has its own event log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from data_exchange_center import schema as S
from data_exchange_center.events import Event, StoredEvent, apply_events, recent_terms
from data_exchange_center.experiments import assign_variant, parse_variants
from data_exchange_center.item_catalog import ItemCatalog, catalog_from_artifacts
from data_exchange_center.settings import load_settings
from online.backends.base import BackendError, ReadyStatus
from online.backends.event_log import AppendResult
from online.backends.sqlite_events import SqliteEventLog
from online.main.s1_server import create_app, service_of
from scripts.native_servers import REPO_ROOT, RedisServer, free_port
from tests.fixtures_artifacts import TinyArtifacts
from tests.online_support import POLICY, copy_published, expected_list, publish_tiny, user_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return publish_tiny(tmp_path_factory.mktemp("published"))


def make_app(data_dir: Path, **overrides: Any) -> Flask:
    app = create_app(load_settings({"data_dir": data_dir, "log_level": "WARNING", **overrides}))
    service_of(app).wait_until_loaded(120)
    return app


@pytest.fixture
def data_dir(tiny: TinyArtifacts, tmp_path: Path) -> Path:
    return copy_published(tiny.paths.data_dir, tmp_path / "data")


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flask]:
    app = make_app(data_dir)
    yield app
    service_of(app).close()


def post(app: Flask, body: Any, **kwargs: Any) -> Any:
    return app.test_client().post("/ml/events", json=body, **kwargs)


def rec(app: Flask, userid: int, size: int = 10) -> dict[str, Any]:
    reply = app.test_client().post("/ml/rec", json={"userid": userid, "size": size})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return dict(reply.get_json())


def items_of(body: dict[str, Any]) -> list[int]:
    return [e["itemid"] for e in body["item_list"]]


def event(userid: int, itemid: int, n: int, rating: float = 5.0) -> dict[str, Any]:
    return {"userid": userid, "itemid": itemid, "rating": rating, "timestamp": 1_000_000 + n, "event_id": f"t-{n}"}


def expected_with_events(
    tiny: TinyArtifacts, userid: int, items: list[int], ratings: list[float], size: int
) -> list[int]:
    """The chain's list from the artifacts with the events applied by the shared functions (the seen
    filter, triggers, terms and the ranker's history features)."""
    return expected_scores(tiny, userid, items, ratings, size)[0]


def expected_scores(
    tiny: TinyArtifacts, userid: int, items: list[int], ratings: list[float], size: int, history: bool = True
) -> tuple[list[int], list[float]]:
    """The list and its scores; ``history=False``: with the published history features (no live ones)."""
    paths = tiny.paths
    labels = (np.array(ratings) > S.POSITIVE_RATING_THRESHOLD).astype(np.int8)
    state = apply_events(user_state(paths, userid), np.array(items), labels, np.array(ratings))
    if items:  # the service's terms follow the events (the recent window's genres)
        catalog = ItemCatalog.from_frame(catalog_from_artifacts(paths))
        state = dataclasses.replace(state, terms=recent_terms(state.seen, state.seen_labels, catalog.genres_of_items))
    ranked, scores = expected_list(paths, userid, size, state, POLICY, live_history=bool(items) and history)
    return ranked.tolist(), np.round(scores.astype(np.float64), 6).tolist()


# --- ingest ---------------------------------------------------------------------------------------------
def test_a_batch_is_stored_once_and_acknowledged_with_202(app: Flask, tiny: TinyArtifacts) -> None:
    userid, items = int(tiny.userids[0]), tiny.itemids[:3].tolist()
    batch = [event(userid, item, n) for n, item in enumerate(items)]
    first = post(app, batch)
    assert first.status_code == 202 and first.get_json() == {"accepted": 3, "stored": 3, "duplicates": 0}
    again = post(app, batch[1:] + [event(userid, items[0], 9)])
    assert again.get_json() == {"accepted": 3, "stored": 1, "duplicates": 2}
    stored = service_of(app).live.log.read_user(userid, 0, 100, 1.0)
    assert [s.event.event_id for s in stored] == ["t-0", "t-1", "t-2", "t-9"]
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'recsys_events_total{outcome="stored"} 4.0' in metrics
    assert 'recsys_events_total{outcome="duplicate"} 2.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "malformed_json"),
        (b"[]", 400, "invalid_body"),
        (b'{"userid": 1}', 422, "missing_field"),
        (b'{"userid": 1, "itemid": 2, "rating": 9, "timestamp": 1, "event_id": "x"}', 422, "invalid_field"),
        (b'{"userid": 1, "itemid": 2, "rating": 4, "timestamp": 1, "event_id": "x", "a": 1}', 422, "unknown_field"),
    ],
)
def test_bad_bodies_get_a_4xx_json_error_and_store_nothing(app: Flask, body: bytes, status: int, code: str) -> None:
    reply = app.test_client().post("/ml/events", data=body, content_type="application/json")
    assert reply.status_code == status and reply.get_json()["error"]["code"] == code
    assert service_of(app).live.log.read_all() == []


def test_an_unknown_item_refuses_the_whole_batch_with_422(app: Flask, tiny: TinyArtifacts) -> None:
    userid = int(tiny.userids[0])
    reply = post(app, [event(userid, int(tiny.itemids[0]), 1), event(userid, 10**12, 2)])
    assert reply.status_code == 422 and reply.get_json()["error"]["code"] == "unknown_item"
    assert "event 1: itemid 1000000000000" in reply.get_json()["error"]["message"]
    assert service_of(app).live.log.read_all() == []


def test_size_content_type_and_api_key_limits(data_dir: Path, tiny: TinyArtifacts) -> None:
    app = make_app(data_dir, api_key="s3cret", max_events_per_request=2)
    ok = event(int(tiny.userids[0]), int(tiny.itemids[0]), 1)
    assert post(app, ok).status_code == 401
    headers = {"X-API-Key": "s3cret"}
    assert post(app, [ok] * 3, headers=headers).get_json()["error"]["message"].startswith("a batch holds at most 2")
    client = app.test_client()
    assert client.post("/ml/events", data=b"x", content_type="text/plain", headers=headers).status_code == 415
    huge = b"[" + b" " * (600 * 1024) + b"]"
    reply = client.post("/ml/events", data=huge, content_type="application/json", headers=headers)
    assert reply.status_code == 413 and "524288" in reply.get_json()["error"]["message"]
    assert post(app, ok, headers=headers).status_code == 202
    service_of(app).close()


# --- live state ------------------------------------------------------------------------------------------
def test_the_next_list_reflects_the_events_as_the_offline_function_says(app: Flask, tiny: TinyArtifacts) -> None:
    userid = int(tiny.userids[3])
    before = rec(app, userid)
    seen = set(user_state(tiny.paths, userid).seen.tolist())
    shown = [i for i in items_of(before) if i not in seen][:2]
    assert post(app, [event(userid, shown[0], 1, 5.0), event(userid, shown[1], 2, 2.0)]).status_code == 202
    after = rec(app, userid)
    assert not set(shown) & set(items_of(after))  # the seen filter
    assert items_of(after) == expected_with_events(tiny, userid, shown, [5.0, 2.0], 10)
    assert items_of(after) != items_of(before)


def test_the_rankers_history_features_follow_the_events(app: Flask, tiny: TinyArtifacts) -> None:
    """The scores after events are those of the history features of the new timeline (the offline
    formulas), not those of the published feature row."""
    userid = int(tiny.userids[2])
    seen = set(user_state(tiny.paths, userid).seen.tolist())
    shown = [i for i in items_of(rec(app, userid)) if i not in seen][:3]
    ratings = [1.0, 1.0, 2.0]  # three dislikes: the click rates drop
    assert post(app, [event(userid, item, n, r) for n, (item, r) in enumerate(zip(shown, ratings, strict=True))])
    body = rec(app, userid)
    served = ([e["itemid"] for e in body["item_list"]], [e["score"] for e in body["item_list"]])
    assert served == expected_scores(tiny, userid, shown, ratings, 10)
    assert served[1] != expected_scores(tiny, userid, shown, ratings, 10, history=False)[1]


def test_events_already_in_the_published_base_are_not_applied_again(tiny: TinyArtifacts, tmp_path: Path) -> None:
    """After a closed-loop run the base holds the user's older events (the fetch stage records their
    store seqs); only the events stored after the newest of them apply on top."""
    userid, other = int(tiny.userids[3]), int(tiny.userids[4])
    base_item = int(user_state(tiny.paths, userid).seen[-1])

    def closed_loop(paths: Any) -> None:  # as if `fetch --events` had taken events 1 and 2 of the log
        pd.DataFrame({S.USER_ID: [userid], S.ITEM_ID: [base_item], "seq": [2]}).to_parquet(paths.event_seqs_path)

    looped = publish_tiny(tmp_path / "looped", before_publish=closed_loop)
    app = make_app(looped.paths.data_dir)
    try:
        unseen = [i for i in tiny.itemids.tolist() if i not in set(user_state(tiny.paths, userid).seen.tolist())]
        sent = [event(userid, unseen[0], 1), event(userid, unseen[1], 2), event(userid, unseen[2], 3)]
        assert post(app, sent).status_code == 202  # store seqs 1, 2, 3
        assert items_of(rec(app, userid)) == expected_with_events(looped, userid, [unseen[2]], [5.0], 10)
        assert post(app, [event(other, unseen[0], 4), event(other, unseen[1], 5)]).status_code == 202
        expected = expected_with_events(looped, other, unseen[:2], [5.0, 5.0], 10)  # watermark 0
        assert items_of(rec(app, other)) == expected
    finally:
        service_of(app).close()


def test_the_terms_follow_the_recent_window_of_events(app: Flask, tiny: TinyArtifacts) -> None:
    from online.service.resilience import Deadline

    catalog = ItemCatalog.from_frame(catalog_from_artifacts(tiny.paths))
    newcomer = 10**9 + 11
    by_genre: dict[str, list[int]] = {}
    for item, genres in zip(catalog.item_ids.tolist(), catalog.genres, strict=True):
        for genre in genres:
            by_genre.setdefault(genre, []).append(item)
    genre, items = max(by_genre.items(), key=lambda kv: len(kv[1]))
    assert post(app, [event(newcomer, item, n) for n, item in enumerate(items[:3])]).status_code == 202
    state, _ = service_of(app).recommender.user_state(newcomer, Deadline(1.0))
    assert state is not None and genre in state.terms
    assert state.terms == recent_terms(state.seen, state.seen_labels, catalog.genres_of_items)
    disliked = [event(newcomer, item, 10 + n, 1.0) for n, item in enumerate(items[3:11])]
    assert post(app, disliked).status_code == 202  # the window moves on: no liked item of the genre left
    state, _ = service_of(app).recommender.user_state(newcomer, Deadline(1.0))
    assert state is not None and genre not in state.terms


def test_a_new_user_with_events_gets_a_personal_list(app: Flask, tiny: TinyArtifacts) -> None:
    newcomer = 10**9 + 7
    cold = items_of(rec(app, newcomer))
    liked = tiny.itemids[[4, 9]].tolist()
    assert post(app, [event(newcomer, liked[0], 1), event(newcomer, liked[1], 2)]).status_code == 202
    warm = items_of(rec(app, newcomer))
    assert warm != cold and not set(liked) & set(warm)
    assert warm == expected_with_events(tiny, newcomer, liked, [5.0, 5.0], 10)


def test_an_event_on_one_worker_is_seen_by_another(data_dir: Path, tiny: TinyArtifacts) -> None:
    first, second = make_app(data_dir), make_app(data_dir)  # two processes' worth of state on one data dir
    userid = int(tiny.userids[1])
    target = items_of(rec(second, userid))[0]
    assert post(first, event(userid, target, 1)).status_code == 202
    assert target not in items_of(rec(second, userid))
    for app in (first, second):
        service_of(app).close()
    restarted = make_app(data_dir)  # and after a restart
    assert target not in items_of(rec(restarted, userid))
    service_of(restarted).close()


class BrokenLog:
    name = "broken"

    def append(self, events: list[Event]) -> AppendResult:
        raise BackendError("events", "disk on fire")

    def read_user(self, userid: int, since_seq: int, limit: int, timeout_s: float) -> list[StoredEvent]:
        raise BackendError("events", "disk on fire")

    def read_all(self, since_seq: int = 0) -> list[StoredEvent]:
        return []

    def status(self) -> ReadyStatus:
        return ReadyStatus(False, self.name)

    def close(self) -> None:
        pass


def test_a_dead_event_log_degrades_lists_and_refuses_to_acknowledge(app: Flask, tiny: TinyArtifacts) -> None:
    userid = int(tiny.userids[2])
    healthy = rec(app, userid)
    service_of(app).live.log = BrokenLog()
    body = rec(app, userid)
    assert body["degraded"] == ["events"] and items_of(body) == items_of(healthy)
    reply = post(app, event(userid, int(tiny.itemids[0]), 1))
    assert reply.status_code == 503 and "send them again" in reply.get_json()["error"]["message"]


# --- experiments -------------------------------------------------------------------------------------------
def test_variants_are_stable_returned_and_counted(data_dir: Path, tiny: TinyArtifacts) -> None:
    spec = "control:1,no_ranker:1:like_weight=0"
    app = make_app(data_dir, experiment_variants=spec)
    variants = parse_variants(spec)
    users = tiny.userids[:12].tolist()
    got = {u: rec(app, int(u))["variant"] for u in users}
    assert got == {u: assign_variant(int(u), variants, "recsys").name for u in users}
    assert set(got.values()) == {"control", "no_ranker"}
    restarted = make_app(data_dir, experiment_variants=spec)
    assert {u: rec(restarted, int(u))["variant"] for u in users} == got
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    n_control = list(got.values()).count("control")
    assert f'recsys_variant_requests_total{{variant="control"}} {float(n_control)}' in metrics
    for a in (app, restarted):
        service_of(a).close()


def test_a_bad_variant_setting_stops_the_app(data_dir: Path) -> None:
    from data_exchange_center.settings import SettingsError

    with pytest.raises(SettingsError, match="experiment_variants"):
        create_app(load_settings({"data_dir": data_dir, "experiment_variants": "a:1:colour=2"}))


# --- kill -9 of the service during ingest ----------------------------------------------------------------
def start_gunicorn(data_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"RECSYS_DATA_DIR": str(data_dir), "RECSYS_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
           "online.main.s1_server:create_app()"]  # fmt: skip
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                start_new_session=True)  # fmt: skip


def wait_ready(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"not ready: {log_path.read_text()[-2000:]}")


def test_kill_9_of_the_service_during_ingest_loses_no_acknowledged_event(
    data_dir: Path, tiny: TinyArtifacts, tmp_path: Path
) -> None:
    port, log_path = free_port(), tmp_path / "server.log"
    proc = start_gunicorn(data_dir, port, log_path)
    wait_ready(port, proc, log_path)
    acked: list[str] = []
    stop = threading.Event()
    users, items = tiny.userids.tolist(), tiny.itemids.tolist()

    def ingest() -> None:
        n = 0
        while not stop.is_set():
            batch = [{"userid": int(users[(n + k) % len(users)]), "itemid": int(items[(n + k) % len(items)]),
                      "rating": 4.0, "timestamp": 1, "event_id": f"k-{n}-{k}"} for k in range(20)]  # fmt: skip
            request = urllib.request.Request(f"http://127.0.0.1:{port}/ml/events", json.dumps(batch).encode(),
                                             {"Content-Type": "application/json"})  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=5) as reply:
                    if reply.status == 202:
                        acked.extend(e["event_id"] for e in batch)
            except OSError:
                pass
            n += 1

    threads = [threading.Thread(target=ingest) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGKILL)  # the master and both workers, mid-ingest
    proc.wait(timeout=10)
    n_acked = len(acked)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    stored = {s.event.event_id for s in SqliteEventLog(path=data_dir / "events" / "events.sqlite3").read_all()}
    assert n_acked > 100, "ingest did not run before the kill"
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged events lost"
    restarted = start_gunicorn(data_dir, port, log_path)  # and the service comes back on the same log
    try:
        wait_ready(port, restarted, log_path)
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(timeout=30)


def test_the_redis_event_log_serves_the_same_live_state(data_dir: Path, tiny: TinyArtifacts, tmp_path: Path) -> None:
    with RedisServer(workdir=tmp_path / "redis") as redis_server:  # its own: this test kills it
        overrides = {"event_store": "redis", "redis_url": redis_server.url, "redis_namespace": "ev"}
        first, second = make_app(data_dir, **overrides), make_app(data_dir, **overrides)
        userid = int(tiny.userids[4])
        target = items_of(rec(second, userid))[0]
        reply = post(first, [event(userid, target, 1), event(userid, target, 1)])
        assert reply.status_code == 202 and reply.get_json() == {"accepted": 2, "stored": 1, "duplicates": 1}
        assert target not in items_of(rec(second, userid))
        assert items_of(rec(second, userid)) == expected_with_events(tiny, userid, [target], [5.0], 10)
        redis_server.kill()  # the log dies: lists fall back to the published profile, events are refused
        assert rec(second, userid)["degraded"] == ["events"]
        assert post(first, event(userid, target, 2)).status_code == 503
        redis_server.start()  # back (AOF): the acknowledged event is still there
        assert target not in items_of(rec(second, userid))
        for app in (first, second):
            service_of(app).close()
