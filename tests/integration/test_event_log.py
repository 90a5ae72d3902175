"""The event log adapters against real stores: SQLite files and a real Redis (tests/servers.py).

Both adapters pass the same contract tests (idempotent append, per-user order, ``since``, limit,
export); then the failure tests: ``kill -9`` of Redis and of the writing process during ingest, after
which every acknowledged event is there (counted).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from data_exchange_center.events import Event
from data_exchange_center.settings import load_settings
from online.backends.base import BackendError
from online.backends.event_log import EventLog, build_event_log
from online.backends.redis_events import RedisEventLog
from online.backends.sqlite_events import SqliteEventLog
from scripts.native_servers import REPO_ROOT, RedisServer

pytestmark = pytest.mark.integration


def make_events(n: int, userid: int = 1, start: int = 0, prefix: str = "e") -> list[Event]:
    return [Event(f"{prefix}{start + i}", userid, 100 + start + i, 4.0 if i % 2 else 2.0, None, 1000 + i)
            for i in range(n)]  # fmt: skip


@pytest.fixture(params=["sqlite", "redis"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer) -> Iterator[EventLog]:
    overrides = {"event_store": request.param, "data_dir": tmp_path, "redis_url": redis_server.url,
                 "redis_namespace": f"t{uuid.uuid4().hex[:8]}"}  # fmt: skip
    log = build_event_log(load_settings(overrides, environ={}))
    yield log
    log.close()


def test_append_is_idempotent_and_reads_keep_store_order(event_log: EventLog) -> None:
    first = event_log.append(make_events(5))
    again = event_log.append(make_events(3, start=3))  # e3, e4 repeat; e5 is new
    assert (first.n_stored, first.n_duplicates) == (5, 0)
    assert (again.n_stored, again.n_duplicates) == (1, 2)
    event_log.append(make_events(2, userid=2, prefix="other"))
    events = event_log.read_user(1, 0, 100, 1.0)
    assert [s.event.event_id for s in events] == [f"e{i}" for i in range(6)]
    assert [s.event.itemid for s in events] == list(range(100, 106))
    assert events[0].event == make_events(1)[0]
    seqs = [s.seq for s in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    assert [s.event.event_id for s in event_log.read_user(1, seqs[3], 100, 1.0)] == ["e4", "e5"]
    assert [s.event.event_id for s in event_log.read_user(1, 0, 2, 1.0)] == ["e4", "e5"]  # the newest
    assert event_log.read_user(99, 0, 100, 1.0) == []
    exported = event_log.read_all()
    assert len(exported) == 8 and {s.event.userid for s in exported} == {1, 2}
    assert [s.seq for s in exported] == sorted(s.seq for s in exported)
    assert [s.event.event_id for s in event_log.read_all(exported[-2].seq)] == [exported[-1].event.event_id]


def test_typed_events_round_trip(event_log: EventLog) -> None:
    event = Event("typed-1", 3, 7, 5.0, "like", 1234567890)
    event_log.append([event])
    assert event_log.read_user(3, 0, 10, 1.0)[0].event == event


def test_sqlite_log_is_shared_by_processes(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    SqliteEventLog(path=path).append(make_events(3))
    code = (
        "import sys; from online.backends.sqlite_events import SqliteEventLog;"
        "from data_exchange_center.events import Event;"
        "log = SqliteEventLog(path=sys.argv[1]); log.append([Event('p1', 1, 9, 5.0, None, 1)]);"
        "print(len(log.read_user(1, 0, 100, 1.0)))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert out.stdout.strip() == "4"  # the other process saw our three and added one
    assert [s.event.event_id for s in SqliteEventLog(path=path).read_user(1, 0, 100, 1.0)][-1] == "p1"


def _open_and_append(path: Path, barrier: Any, name: str) -> None:
    barrier.wait()
    SqliteEventLog(path=path).append([Event(name, 1, 9, 5.0, None, 1)])


def test_processes_that_open_a_new_sqlite_log_together_all_start(tmp_path: Path) -> None:
    """gunicorn's workers, forked together, open a fresh log at the same moment; SQLite's switch to WAL is
    contended then (without a retry one worker failed to boot with "database is locked" and took the server
    down). Forked processes released by a barrier, on ten fresh logs."""
    context = mp.get_context("fork")
    for attempt in range(10):
        path, barrier = tmp_path / f"events-{attempt}.sqlite3", context.Barrier(6)
        procs = [context.Process(target=_open_and_append, args=(path, barrier, f"w{i}")) for i in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0] * 6, f"attempt {attempt}"
        assert len(SqliteEventLog(path=path).read_user(1, 0, 100, 1.0)) == 6


def test_redis_without_aof_refuses_to_acknowledge(tmp_path: Path) -> None:
    with RedisServer(appendonly=False) as server:
        settings = load_settings({"event_store": "redis", "redis_url": server.url}, environ={})
        log = RedisEventLog(settings)
        with pytest.raises(BackendError, match="nothing acknowledged"):
            log.append(make_events(1))
        log.close()


def ingest_until_stopped(log: EventLog, stop: threading.Event, acked: list[str], errors: list[str]) -> None:
    batch = 0
    while not stop.is_set():
        events = make_events(50, userid=batch % 7, start=batch * 50, prefix="k")
        try:
            log.append(events)
        except BackendError as exc:
            errors.append(str(exc))
            time.sleep(0.01)
            continue
        acked.extend(e.event_id for e in events)  # acknowledged: append returned
        batch += 1


def test_kill_9_of_redis_during_ingest_loses_no_acknowledged_event(tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path / "redis")
    server.start()
    try:
        settings = load_settings({"event_store": "redis", "redis_url": server.url}, environ={})
        log = RedisEventLog(settings)
        acked: list[str] = []
        errors: list[str] = []
        stop = threading.Event()
        writers = [threading.Thread(target=ingest_until_stopped, args=(log, stop, acked, errors)) for _ in range(1)]
        for w in writers:
            w.start()
        time.sleep(1.0)
        server.kill()  # SIGKILL while batches are in flight
        n_acked_at_kill = len(acked)
        time.sleep(0.3)
        stop.set()
        for w in writers:
            w.join(timeout=30)
        server.start()
        stored = {s.event.event_id for s in log.read_all()}
        assert n_acked_at_kill > 500, "ingest did not run long enough before the kill"
        assert errors, "no append failed while Redis was dead"
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
        assert log.count() == len(stored) >= len(acked)
        log.close()
    finally:
        server.stop()


WRITER = """
import sys
from data_exchange_center.events import Event
from online.backends.event_log import build_event_log
from data_exchange_center.settings import load_settings
log = build_event_log(load_settings({"event_store": sys.argv[1], "data_dir": sys.argv[2], "redis_url": sys.argv[3]},
                                    environ={}))
batch = 0
while True:
    events = [Event(f"w{batch}-{i}", batch % 5, i, 4.0, None, 1) for i in range(100)]
    log.append(events)
    print(batch, flush=True)  # acknowledged
    batch += 1
"""


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_kill_9_of_the_writer_during_ingest_loses_no_acknowledged_event(
    store: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    redis.Redis.from_url(redis_server.url).delete(b"recsys:events:log")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, store, str(tmp_path), redis_server.url],
                            stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert proc.stdout is not None
    acked = []
    deadline = time.monotonic() + 30
    while len(acked) < 20 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            acked.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    acked += [int(line) for line in proc.stdout.read().split()]
    settings = load_settings({"event_store": store, "data_dir": tmp_path, "redis_url": redis_server.url}, environ={})
    log = build_event_log(settings)
    stored = {s.event.event_id for s in log.read_all()}
    expected = {f"w{b}-{i}" for b in acked for i in range(100)}
    assert len(acked) >= 20, json.dumps(acked)
    assert expected <= stored, f"{len(expected - stored)} acknowledged events lost"
    assert len(stored) % 100 == 0  # a batch is stored whole or not at all
    log.close()
