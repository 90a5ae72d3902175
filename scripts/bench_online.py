"""Load benchmark of the online service: gunicorn on loopback, random users, real load generators.

    python scripts/bench_online.py --data-dir /path/to/published/artifacts
    python scripts/bench_online.py --profile compose     # real Redis, Feast (Redis store), tritonserver
    python scripts/bench_online.py --overload            # wrk, 256 connections, 60 s: shed, not queued

0. ``--profile compose``: copies the published data to a temporary folder, starts a real Redis and
   tritonserver natively (``scripts/native_servers.py``, as the services tests do), publishes users
   and features there with ``--profile compose``, and serves with ``RECSYS_PROFILE=compose`` (the item
   index in process: no Elasticsearch runs here);
1. starts ``gunicorn -c python:online.main.gunicorn_conf 'online.main.s1_server:create_app()'``
   (``--workers``; threads and the in-flight bound from the config) on a free loopback port, and waits
   for ``GET /ready``;
2. saturation (closed loop): ``wrk`` with ``--connections`` keep-alive connections for ``--duration``
   seconds, each request a random published user (a Lua script); throughput, latency, errors;
3. fixed offered rates (open loop): an asyncio generator that schedules request ``i`` at
   ``t0 + i / rate`` whatever the server does, and counts each latency from that scheduled time (a
   late server is not allowed to slow the generator down: coordinated omission is avoided); it
   reports how late its own sends were and its CPU time, to show that it is not the bottleneck;
4. where the time goes: the server's per-step histograms (deltas of /metrics over each phase);
5. stops the server (SIGTERM to its own PID), prints a table, writes ``reports/bench_online.json``,
   and exits 1 if a goal is missed (>= 400 req/s at saturation with no error; p99 <= 15 ms at 200 req/s,
   no error and no degraded answer);
6. ``--overload``: instead of 2-3, wrk with ``--overload-connections`` for ``--overload-duration`` s while
   a probe (a few Python clients) times each answer by status; goals: served p99 <= 250 ms, every
   rejection (503 + Retry-After) in < 5 ms, no socket error, no worker restart, workers' resident
   memory after the run within 10 % of before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_exchange_center.online_layout import current_version_dir, users_store_dir  # noqa: E402
from data_exchange_center.paths import ArtifactPaths  # noqa: E402

GOAL_SATURATION_RPS = 400.0
GOAL_P99_MS_AT_200 = 15.0
GOAL_OVERLOAD_SERVED_P99_MS = 250.0
GOAL_REJECTION_MS = 5.0
# user_vector (the request-time user side of the vector model) is timed inside recall_candidates
STEPS = ("fetch_user_profile", "user_vector", "recall_candidates", "fetch_features", "score", "rank_and_filter")
WRK_SCRIPT = """
local users = {%s}
request = function()
  local body = '{"userid": ' .. users[math.random(#users)] .. '}'
  return wrk.format("POST", "/ml/rec", {["Content-Type"] = "application/json"}, body)
end
local errors = 0
response = function(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end
"""


# --- the server ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    args: argparse.Namespace, port: int, metrics_dir: Path, log_path: Path, backend_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "RECSYS_DATA_DIR": str(args.data_dir),
        "RECSYS_PROFILE": "embedded",
        "RECSYS_LOG_LEVEL": args.log_level,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": str(REPO),
        **backend_env,
    }
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:online.main.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
           "--workers", str(args.workers), "--timeout", "120"]  # fmt: skip
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["online.main.s1_server:create_app()"]
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)


WARM_STREAK = 40  # consecutive 200s to POST /ml/rec on new connections: every worker has loaded


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 300) -> float:
    """Seconds until the server serves: ``/ready`` answers 200 (from whichever worker took the connection),
    then ``WARM_STREAK`` recommendations in a row succeed, each on a new connection (workers accept nothing
    before they have loaded, so this holds at once; it stays as a check, and it warms the connections up)."""
    started, streak, body = time.monotonic(), 0, json.dumps({"userid": 1}).encode()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as reply:
                ready = reply.status == 200
            while ready and streak < WARM_STREAK:
                request = urllib.request.Request(url + "/ml/rec", body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=2) as reply:
                    streak = streak + 1 if reply.status == 200 else 0
            if streak >= WARM_STREAK:
                return time.monotonic() - started
        except OSError:
            streak = 0
        time.sleep(0.5)
    sys.exit(f"the server was not ready after {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def published_users(data_dir: Path) -> np.ndarray:
    import pandas as pd

    version_dir = current_version_dir(users_store_dir(ArtifactPaths(data_dir)))
    if version_dir is None:
        sys.exit(f"no published users under {data_dir}: run the offline_to_online stages (embedded) first")
    return pd.read_parquet(version_dir / "users.parquet", columns=["userid"])["userid"].to_numpy(np.int64)


# --- server-side metrics -------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^(recsys_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+\-]+|NaN)$")


def scrape(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


def step_breakdown(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, Any]:
    """Mean and approximate p99 (bucket upper bound) of each step over a phase, in ms."""
    out = {}
    for step in STEPS:
        label = f'step="{step}"'
        count = after.get(("recsys_step_duration_seconds_count", label), 0) - before.get(
            ("recsys_step_duration_seconds_count", label), 0)  # fmt: skip
        total = after.get(("recsys_step_duration_seconds_sum", label), 0) - before.get(
            ("recsys_step_duration_seconds_sum", label), 0)  # fmt: skip
        buckets = sorted(
            (float(re.search(r'le="([^"]+)"', key[1]).group(1)), value - before.get(key, 0))  # type: ignore[union-attr]
            for key, value in after.items()
            if key[0] == "recsys_step_duration_seconds_bucket" and label in key[1]
        )
        p99 = next((le for le, n in buckets if count and n >= 0.99 * count), float("inf"))
        out[step] = {"mean_ms": round(1000 * total / count, 3) if count else None, "p99_le_ms": p99 * 1000}
    return out


def outcomes(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, int]:
    """What the server answered over a phase: ``recsys_requests_total`` by endpoint and outcome, and the
    requests shed at once (``recsys_shed_total``), as deltas; zero rows left out."""
    out = {}
    for key, value in after.items():
        if key[0] in ("recsys_requests_total", "recsys_shed_total"):
            delta = int(value - before.get(key, 0))
            if delta:
                out[f"{key[0].removeprefix('recsys_').removesuffix('_total')}{key[1]}"] = delta
    return out


# --- closed loop: wrk ----------------------------------------------------------------------------------
def run_wrk(url: str, users: np.ndarray, connections: int, duration_s: int, workdir: Path) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    sample = np.random.default_rng(0).choice(users, size=min(len(users), 5000), replace=False)
    script = workdir / "random_users.lua"
    script.write_text(WRK_SCRIPT % ", ".join(map(str, sample.tolist())))
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    latency = {p: _ms(re.search(rf"\s{p}%\s+([0-9.]+[mu]?s)", out).group(1)) for p in ("50", "90", "99")}  # type: ignore[union-attr]
    return {"requests_per_s": rps, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None, "latency_ms": latency,
            "connections": connections, "duration_s": duration_s, "raw": out}  # fmt: skip


def _ms(text: str) -> float:
    value = float(re.match(r"[0-9.]+", text).group(0))  # type: ignore[union-attr]
    return value / 1000 if text.endswith("us") else value if text.endswith("ms") else value * 1000


# --- open loop: asyncio, latency from the scheduled send time -------------------------------------------
async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> tuple[int, bool]:
    """(status, degraded) of one request on a kept-alive connection."""
    reader, writer = conn
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    body = await reader.readexactly(length)
    return status, status == 200 and b'"degraded":[]' not in body


async def open_loop(
    port: int, users: np.ndarray, rate: float, duration_s: float, max_conns: int = 64
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(int(rate))
    n = int(rate * duration_s)
    picked = rng.choice(users, size=n).tolist()
    idle: asyncio.Queue[Any] = asyncio.Queue()
    n_open = 0
    latencies, late, errors, degraded = np.zeros(n), np.zeros(n), 0, 0
    cpu0, t0 = time.process_time(), loop.time() + 0.5

    async def one(i: int) -> None:
        nonlocal n_open, errors, degraded
        scheduled = t0 + i / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        late[i] = loop.time() - scheduled
        if idle.empty() and n_open < max_conns:
            n_open += 1
            conn = await asyncio.open_connection("127.0.0.1", port)
        else:
            conn = await idle.get()
        body = json.dumps({"userid": int(picked[i])}).encode()
        request = (b"POST /ml/rec HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        try:
            status, was_degraded = await _exchange(conn, request)
            errors += status != 200
            degraded += was_degraded
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            n_open -= 1
        latencies[i] = loop.time() - scheduled

    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = loop.time() - t0
    ms = latencies * 1000
    latency = {p: round(float(np.percentile(ms, p)), 3) for p in (50, 95, 99)}
    generator = {
        "send_late_p99_ms": round(float(np.percentile(late, 99) * 1000), 3),
        "cpu_share": round((time.process_time() - cpu0) / elapsed, 3),
        "connections": n_open,
    }
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(n / elapsed, 1),
        "requests": n,
        "errors": errors,
        "degraded": degraded,
        "latency_ms": latency | {"max": round(float(ms.max()), 3)},
        "generator": generator,
    }


# --- overload: wrk far past capacity, a probe timing answers by status ----------------------------------
def worker_pids(master_pid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master_pid:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def cpu_seconds(pids: list[int]) -> list[float]:
    """User + system CPU seconds of each process so far (``/proc/<pid>/stat``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / ticks)
    return out


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return round(total / 1024, 1)


def probe(port: int, users: np.ndarray, stop: threading.Event, out: list[tuple[int, float, bool]]) -> None:
    """One client on its own connection: a request every 20 ms, each answer timed (status, ms, Retry-After)."""
    import http.client

    rng = np.random.default_rng(port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        body = json.dumps({"userid": int(rng.choice(users))})
        started = time.perf_counter()
        try:
            conn.request("POST", "/ml/rec", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            out.append(
                (reply.status, (time.perf_counter() - started) * 1000, reply.getheader("Retry-After") is not None)
            )
            if reply.getheader("Connection", "").lower() == "close":
                conn.close()
        except OSError:
            out.append((0, (time.perf_counter() - started) * 1000, False))
            conn.close()
        stop.wait(0.02)


def run_overload(url: str, port: int, users: np.ndarray, args: argparse.Namespace, workdir: Path,
                 master_pid: int) -> dict[str, Any]:  # fmt: skip
    run_wrk(url, users, 32, 5, workdir)  # warm-up: every worker has loaded and served
    pids_before = worker_pids(master_pid)
    rss_before = rss_mib(pids_before)
    stop, answers = threading.Event(), cast(list[tuple[int, float, bool]], [])
    probes = [threading.Thread(target=probe, args=(port, users, stop, answers)) for _ in range(4)]
    for thread in probes:
        thread.start()
    try:
        result = run_wrk(url, users, args.overload_connections, args.overload_duration, workdir)
    finally:
        stop.set()
        for thread in probes:
            thread.join()
    time.sleep(2)
    pids_after = worker_pids(master_pid)
    served = np.array([ms for status, ms, _ in answers if status == 200])
    rejected = np.array([ms for status, ms, _ in answers if status in (429, 503)])
    pct = lambda a, p: round(float(np.percentile(a, p)), 2) if len(a) else None  # noqa: E731
    result.pop("raw")
    return result | {
        "probe": {
            "answers": len(answers),
            "served": len(served),
            "served_p50_ms": pct(served, 50),
            "served_p99_ms": pct(served, 99),
            "rejected": len(rejected),
            "rejected_p50_ms": pct(rejected, 50),
            "rejected_p99_ms": pct(rejected, 99),
            "rejected_max_ms": round(float(rejected.max()), 2) if len(rejected) else None,
            "rejections_with_retry_after": sum(1 for s, _, ra in answers if s in (429, 503) and ra),
            "failed": sum(1 for s, _, _ in answers if s not in (200, 429, 503)),
        },  # fmt: skip
        "workers_before": pids_before,
        "workers_after": pids_after,
        "rss_mib_before": rss_before,
        "rss_mib_after": rss_mib(pids_after),
    }


# --- the compose profile's servers, natively -----------------------------------------------------------
@contextlib.contextmanager
def compose_backends(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, str]]:
    """A copy of the published data, real Redis and tritonserver, users and features published there."""
    from data_exchange_center.online_layout import python_model_repository_dir
    from scripts.native_servers import RedisServer, TritonServer

    data_dir = workdir / "data"
    shutil.copytree(args.data_dir, data_dir, ignore=shutil.ignore_patterns("dataset", "raw", "bench-*"))
    with RedisServer(appendonly=False) as redis_server:
        for stage, extra in (
            ("offline_to_online.recall.s1_user_to_redis", []),
            ("offline_to_online.rank.s1_feature_to_feast", ["--server-redis-url", redis_server.url]),
        ):
            cmd = [sys.executable, "-m", stage, "--data-dir", str(data_dir), "--profile", "compose",
                   "--redis-url", redis_server.url, "--quiet", *extra]  # fmt: skip
            subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        with TritonServer(python_model_repository_dir(ArtifactPaths(data_dir))) as triton:
            args.data_dir = data_dir
            yield {"RECSYS_PROFILE": "compose", "RECSYS_INDEX_BACKEND": "local",
                   "RECSYS_REDIS_URL": redis_server.url, "RECSYS_TRITON_URL": triton.grpc_url}  # fmt: skip


# --- the whole run ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ArtifactPaths.from_env().data_dir,
                        help="published artifacts (default: $RECSYS_DATA_DIR)")  # fmt: skip
    parser.add_argument("--profile", choices=["embedded", "compose"], default="embedded")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: the gunicorn config)")
    parser.add_argument("--overload", action="store_true", help="the overload run instead of saturation + open loop")
    parser.add_argument("--overload-connections", type=int, default=256)
    parser.add_argument("--overload-duration", type=int, default=60)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections at saturation")
    parser.add_argument("--duration", type=int, default=20, help="seconds of each phase")
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0, 300.0], help="open-loop rates")
    parser.add_argument("--log-level", default="WARNING", help="server log level (INFO logs every request)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: reports/bench_online.json)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        backend_env = stack.enter_context(compose_backends(args, workdir)) if args.profile == "compose" else {}
        return run_server(args, workdir, backend_env)
    raise AssertionError("unreachable")


def run_server(args: argparse.Namespace, workdir: Path, backend_env: dict[str, str]) -> dict[str, Any]:
    users = published_users(args.data_dir)
    port, log_path = free_port(), workdir / "server.log"
    url = f"http://127.0.0.1:{port}"
    (workdir / "metrics").mkdir()
    proc = start_server(args, port, workdir / "metrics", log_path, backend_env)
    try:
        report: dict[str, Any] = {"ready_after_s": round(wait_ready(url, proc, log_path), 1), "users": len(users),
                                  "profile": args.profile}  # fmt: skip
        if args.overload:
            report["overload"] = run_overload(url, port, users, args, workdir, proc.pid)
            return report
        run_wrk(url, users, args.connections, 3, workdir)  # warm-up
        before, workers = scrape(url), worker_pids(proc.pid)
        cpu_before = cpu_seconds(workers)
        report["saturation"] = run_wrk(url, users, args.connections, args.duration, workdir)
        report["saturation"]["steps"] = step_breakdown(before, after := scrape(url))
        report["saturation"]["outcomes"] = outcomes(before, after)
        report["saturation"]["worker_cpu"] = [  # the share of one core each worker used (balance)
            round((b - a) / args.duration, 2) for a, b in zip(cpu_before, cpu_seconds(workers), strict=True)
        ]
        report["open_loop"] = []
        for rate in args.rates:
            before = after
            result = asyncio.run(open_loop(port, users, rate, args.duration))
            result["steps"] = step_breakdown(before, after := scrape(url))
            report["open_loop"].append(result)
    finally:
        stop_server(proc)
    return report


def print_overload(report: dict[str, Any]) -> bool:
    o = report["overload"]
    p = o["probe"]
    print(f"overload ({o['connections']} connections, {o['duration_s']} s, wrk): {o['requests_per_s']:.0f} answers/s, "
          f"non-2xx {o['non_2xx']}, socket errors {o['socket_errors']}, p50/p99 {o['latency_ms']['50']:.1f}/"
          f"{o['latency_ms']['99']:.1f} ms (all answers)")  # fmt: skip
    print(f"probe: {p['served']} served p50/p99 {p['served_p50_ms']}/{p['served_p99_ms']} ms; {p['rejected']} rejected "
          f"p50/p99/max {p['rejected_p50_ms']}/{p['rejected_p99_ms']}/{p['rejected_max_ms']} ms "
          f"({p['rejections_with_retry_after']} with Retry-After); {p['failed']} failed")  # fmt: skip
    print(
        f"workers {o['workers_before']} -> {o['workers_after']}, RSS {o['rss_mib_before']} -> {o['rss_mib_after']} MiB"
    )
    ok = o["socket_errors"] is None and p["failed"] == 0 and o["workers_before"] == o["workers_after"]
    ok &= p["served_p99_ms"] is not None and p["served_p99_ms"] <= GOAL_OVERLOAD_SERVED_P99_MS
    ok &= p["rejected_max_ms"] is None or p["rejected_max_ms"] < GOAL_REJECTION_MS
    ok &= p["rejections_with_retry_after"] == p["rejected"]
    ok &= o["rss_mib_after"] <= 1.1 * o["rss_mib_before"]
    print("goals (served p99 <= 250 ms, rejections < 5 ms, no socket error, no restart, RSS +10 %):",
          "met" if ok else "NOT met")  # fmt: skip
    return ok


def print_report(report: dict[str, Any]) -> bool:
    if "overload" in report:
        return print_overload(report)
    sat = report["saturation"]
    print(f"saturation ({sat['connections']} connections, wrk): {sat['requests_per_s']:.0f} req/s, "
          f"p50/p90/p99 {sat['latency_ms']['50']:.1f}/{sat['latency_ms']['90']:.1f}/{sat['latency_ms']['99']:.1f} ms, "
          f"non-2xx {sat['non_2xx']}, socket errors {sat['socket_errors']}")  # fmt: skip
    print("  server's answers:", ", ".join(f"{k} {v}" for k, v in sat.get("outcomes", {}).items()),
          "; workers' CPU (cores):", sat.get("worker_cpu"))  # fmt: skip
    print(
        f"{'offered/s':>9} {'achieved':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'degraded':>8} "
        f"{'gen late p99':>12}"
    )
    for r in report["open_loop"]:
        lat = r["latency_ms"]
        print(f"{r['offered_per_s']:>9.0f} {r['achieved_per_s']:>9.1f} {lat[50]:>7.2f} {lat[95]:>7.2f} {lat[99]:>7.2f} "
              f"{r['errors']:>6} {r['degraded']:>8} {r['generator']['send_late_p99_ms']:>9.2f} ms")  # fmt: skip
    print("per step at saturation (mean ms / p99 bucket ms):")
    for step, s in sat["steps"].items():
        print(f"  {step:<20} {s['mean_ms']} / <= {s['p99_le_ms']:g}")
    at_200 = [r for r in report["open_loop"] if r["offered_per_s"] == 200.0]
    ok = sat["requests_per_s"] >= GOAL_SATURATION_RPS and sat["non_2xx"] == 0 and not sat["socket_errors"]
    ok &= all(r["errors"] == 0 and r["degraded"] == 0 for r in report["open_loop"])
    ok &= bool(at_200) and at_200[0]["latency_ms"][99] <= GOAL_P99_MS_AT_200
    print("goals (>= 400 req/s, 0 errors, 0 degraded, p99 <= 15 ms at 200 req/s):", "met" if ok else "NOT met")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir  # a compose run serves a temporary copy
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        report = run(args, Path(tmp))
    ok = print_report(report)
    name = "bench_online_overload.json" if args.overload else f"bench_online_{args.profile}.json"
    out = args.out or ArtifactPaths(data_dir).reports_dir / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report | {"goals_met": ok}, indent=2) + "\n")
    print(f"report: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
