"""Benchmark of live feedback: event ingest beside recommendations, and event-to-visible latency.

    python scripts/bench_events.py --data-dir /path/to/published/artifacts

1. starts the service under gunicorn (``--workers`` 2, embedded profile) on a free loopback port with
   a fresh event log in a temporary folder (``RECSYS_EVENTS_PATH``), and waits for ``GET /ready``;
2. baseline: ``POST /ml/rec`` at ``--rate`` requests/s (open loop, ``bench_online.open_loop``) alone;
3. ingest: the same recommendation load while ``--ingest-procs`` processes post batches of
   ``--batch`` events (random published users and items) paced at ``--ingest-rate`` events/s in all
   (default: the goal's 2,000), or with ``--ingest-rate 0`` as fast as the service acknowledges them;
   events/s acknowledged (202), and the recommendation latency meanwhile;
4. event-to-visible: ``--probes`` times, a user's top item is posted as an event and ``/ml/rec`` is asked
   again (each request goes to whichever worker accepts it) until the item is gone from the list; the
   time from sending the event to the first list without it;
5. prints a table, writes ``reports/bench_events.json`` and exits 1 when a goal is missed (>= 2,000
   events/s with /ml/rec p99 <= 10 ms at 200 req/s; event-to-visible p99 <= 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing as mp
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_exchange_center.paths import ArtifactPaths  # noqa: E402
from scripts.bench_online import free_port, open_loop, published_users, start_server, stop_server, wait_ready  # noqa: E402

GOAL_EVENTS_PER_S = 2000.0
GOAL_REC_P99_MS = 10.0
GOAL_VISIBLE_P99_S = 1.0


def post_json(conn: http.client.HTTPConnection, path: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read() or b"null")


def ingest_worker(
    port: int, users: np.ndarray, items: np.ndarray, batch: int, duration_s: float, seed: int, out: Any,
    interval_s: float = 0.0,
) -> None:
    """Post batches until ``duration_s`` is over, batch ``n`` at ``start + n * interval_s`` (0: each as soon
    as the previous one is acknowledged); puts (acknowledged events, failed batches, batch latencies, the
    ``time.monotonic`` of its start and of its last answer: the window in which it posted)."""
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    acked, failed, latencies, n = 0, 0, [], 0
    start = time.monotonic()
    deadline = start + duration_s
    while time.monotonic() < deadline:
        if interval_s:
            time.sleep(max(0.0, start + n * interval_s - time.monotonic()))
        events = [
            {
                "userid": int(u),
                "itemid": int(i),
                "rating": float(r),
                "timestamp": 1_000_000_000 + n + k,
                "event_id": f"bench-{seed}-{n}-{k}",
            }
            for k, (u, i, r) in enumerate(
                zip(rng.choice(users, batch), rng.choice(items, batch), rng.integers(1, 6, batch), strict=True)
            )
        ]
        started = time.perf_counter()
        status, _ = post_json(conn, "/ml/events", events)
        latencies.append(time.perf_counter() - started)
        acked, failed, n = acked + batch * (status == 202), failed + (status != 202), n + 1
    out.put((acked, failed, latencies, start, time.monotonic()))


def run_ingest(args: argparse.Namespace, port: int, users: np.ndarray, items: np.ndarray) -> dict[str, Any]:
    """The recommendation load at ``args.rate`` while ingest processes post events; both measured."""
    queue: Any = mp.Queue()
    interval = args.batch * args.ingest_procs / args.ingest_rate if args.ingest_rate else 0.0  # per process
    procs = [
        mp.Process(target=ingest_worker, args=(port, users, items, args.batch, args.duration, seed, queue, interval))
        for seed in range(args.ingest_procs)
    ]
    for p in procs:
        p.start()
    rec = asyncio.run(open_loop(port, users, args.rate, args.duration))
    results = [queue.get(timeout=args.duration + 60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    acked = sum(r[0] for r in results)
    # the rate over the posting window (first process start to last answer; the monotonic clock is
    # system-wide), not over the time it took to fork the processes
    window = max(r[4] for r in results) - min(r[3] for r in results)
    batch_ms = np.array([x for r in results for x in r[2]]) * 1000
    return {
        "events_per_s": round(acked / window, 1),
        "events_acknowledged": acked,
        "failed_batches": sum(r[1] for r in results),
        "batch_latency_ms": {p: round(float(np.percentile(batch_ms, p)), 3) for p in (50, 99)},
        "rec": rec,
    }


def rec_items(conn: http.client.HTTPConnection, userid: int, tries: int = 50) -> list[int]:
    """The user's top 10, retrying a shed request (503: a worker beyond its in-flight limit answers at once)."""
    for _ in range(tries):
        status, body = post_json(conn, "/ml/rec", {"userid": userid, "size": 10})
        if status == 200:
            return [e["itemid"] for e in body["item_list"]]
        time.sleep(0.01)
    raise RuntimeError(f"/ml/rec for user {userid}: HTTP {status} {tries} times")


def visible_probes(port: int, users: np.ndarray, n: int, seed: int = 7) -> dict[str, Any]:
    """Seconds from sending an event (the user's top item) to the first list without that item."""
    rng = np.random.default_rng(seed)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(2)]
    seconds, misses = [], 0
    for probe, userid in enumerate(rng.choice(users, n, replace=False).tolist()):
        top = rec_items(conns[0], userid)[0]
        started = time.perf_counter()
        event = {"userid": userid, "itemid": top, "rating": 5, "timestamp": 2_000_000_000, "event_id": f"probe-{probe}"}
        status, _ = post_json(conns[0], "/ml/events", event)
        assert status == 202, status
        while True:  # every other probe on a fresh connection: any worker may take it
            conn = conns[1] if probe % 2 else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if top not in rec_items(conn, userid):
                break
            if time.perf_counter() - started > 5:
                misses += 1
                break
        seconds.append(time.perf_counter() - started)
    ms = np.array(seconds) * 1000
    percentiles = {p: round(float(np.percentile(ms, p)), 3) for p in (50, 99)}
    return {"probes": n, "not_visible_after_5s": misses, "visible_ms": percentiles | {"max": round(float(ms.max()), 3)}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ArtifactPaths.from_env().data_dir)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: the gunicorn config)")
    parser.add_argument("--rate", type=float, default=200.0, help="offered /ml/rec requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each load phase")
    parser.add_argument("--batch", type=int, default=100, help="events per POST /ml/events")
    parser.add_argument("--ingest-procs", type=int, default=2, help="processes posting events")
    parser.add_argument(
        "--ingest-rate", type=float, default=GOAL_EVENTS_PER_S,
        help="events/s offered in all, paced (default: the goal's 2,000); 0: as fast as acknowledged (capacity)",
    )
    parser.add_argument("--probes", type=int, default=200, help="event-to-visible probes")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM runs the finally that stops the server
    users = published_users(args.data_dir)
    import pandas as pd

    items = pd.read_parquet(ArtifactPaths(args.data_dir).item_features_path, columns=["itemid"])["itemid"].to_numpy()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        log_path = workdir / "server.log"
        (workdir / "metrics").mkdir()
        events_env = {"RECSYS_EVENTS_PATH": str(workdir / "events.sqlite3")}  # a fresh event log
        proc = start_server(args, port, workdir / "metrics", log_path, events_env)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc, log_path)
            asyncio.run(open_loop(port, users, args.rate, 3.0))  # warm-up
            report = {
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "baseline": asyncio.run(open_loop(port, users, args.rate, args.duration)),
                "ingest": run_ingest(args, port, users, items),
                "visible": visible_probes(port, users, args.probes),
            }
        finally:
            stop_server(proc)
    out = ArtifactPaths(args.data_dir).reports_dir / "bench_events.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    ingest, visible = report["ingest"], report["visible"]
    rec_p99 = ingest["rec"]["latency_ms"][99]
    print(
        f"baseline /ml/rec at {args.rate:.0f}/s: p50 {report['baseline']['latency_ms'][50]} ms, "
        f"p99 {report['baseline']['latency_ms'][99]} ms, errors {report['baseline']['errors']}"
    )
    print(
        f"ingest: {ingest['events_per_s']} events/s acknowledged (batches of {args.batch}, "
        f"p50 {ingest['batch_latency_ms'][50]} ms/batch), {ingest['failed_batches']} failed batches"
    )
    print(
        f"  /ml/rec meanwhile at {ingest['rec']['achieved_per_s']}/s: p50 {ingest['rec']['latency_ms'][50]} ms, "
        f"p99 {rec_p99} ms, errors {ingest['rec']['errors']}"
    )
    print(
        f"event-to-visible over {args.workers} workers: p50 {visible['visible_ms'][50]} ms, "
        f"p99 {visible['visible_ms'][99]} ms, not visible after 5 s: {visible['not_visible_after_5s']}"
    )
    print(f"wrote {out}")
    ok = (
        ingest["events_per_s"] >= GOAL_EVENTS_PER_S
        and rec_p99 <= GOAL_REC_P99_MS
        and ingest["failed_batches"] == 0
        and visible["visible_ms"][99] <= GOAL_VISIBLE_P99_S * 1000
        and visible["not_visible_after_5s"] == 0
    )
    print("goals met" if ok else "a goal was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
