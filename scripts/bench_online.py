"""Load benchmark of the online service: gunicorn on loopback, random users, real load generators.

    python scripts/bench_online.py --data-dir /path/to/published/artifacts

1. starts ``gunicorn 'online.main.s1_server:create_app()'`` (``--workers``, ``--threads``) on a free
   loopback port, with ``PROMETHEUS_MULTIPROC_DIR`` so that /metrics sums the workers, and waits for
   ``GET /ready``;
2. saturation (closed loop): ``wrk`` with ``--connections`` keep-alive connections for ``--duration``
   seconds, each request a random published user (a Lua script); throughput, latency, errors;
3. fixed offered rates (open loop): an asyncio generator that schedules request ``i`` at
   ``t0 + i / rate`` whatever the server does, and counts each latency from that scheduled time (a
   late server is not allowed to slow the generator down: coordinated omission is avoided); it
   reports how late its own sends were and its CPU time, to show that it is not the bottleneck;
4. where the time goes: the server's per-step histograms (deltas of /metrics over each phase);
5. stops the server (SIGTERM to its own PID), prints a table, writes ``reports/bench_online.json``,
   and exits 1 if a goal is missed (>= 400 req/s at saturation with no error; p99 <= 25 ms at 200 req/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_exchange_center.online_layout import current_version_dir, users_store_dir  # noqa: E402
from data_exchange_center.paths import ArtifactPaths  # noqa: E402

GOAL_SATURATION_RPS = 400.0
GOAL_P99_MS_AT_200 = 25.0
STEPS = ("fetch_user_profile", "recall_candidates", "fetch_features", "score", "rank_and_filter")
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


def start_server(args: argparse.Namespace, port: int, metrics_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "RECSYS_DATA_DIR": str(args.data_dir),
        "RECSYS_PROFILE": "embedded",
        "RECSYS_LOG_LEVEL": args.log_level,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
           "--threads", str(args.threads), "--timeout", "120", "online.main.s1_server:create_app()"]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
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
_SAMPLE = re.compile(r"^(recsys_[a-z_]+)\{([^}]*)\} ([0-9.e+\-]+|NaN)$")


def scrape(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[(match.group(1), match.group(2))] = float(match.group(3))
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
async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> int:
    reader, writer = conn
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return status


async def open_loop(
    port: int, users: np.ndarray, rate: float, duration_s: float, max_conns: int = 64
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(int(rate))
    n = int(rate * duration_s)
    picked = rng.choice(users, size=n).tolist()
    idle: asyncio.Queue[Any] = asyncio.Queue()
    n_open = 0
    latencies, late, errors = np.zeros(n), np.zeros(n), 0
    cpu0, t0 = time.process_time(), loop.time() + 0.5

    async def one(i: int) -> None:
        nonlocal n_open, errors
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
            status = await _exchange(conn, request)
            errors += status != 200
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
        "latency_ms": latency | {"max": round(float(ms.max()), 3)},
        "generator": generator,
    }


# --- the whole run ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ArtifactPaths.from_env().data_dir,
                        help="published artifacts (default: $RECSYS_DATA_DIR)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections at saturation")
    parser.add_argument("--duration", type=int, default=20, help="seconds of each phase")
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0, 300.0], help="open-loop rates")
    parser.add_argument("--log-level", default="WARNING", help="server log level (INFO logs every request)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: reports/bench_online.json)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    users = published_users(args.data_dir)
    port, log_path = free_port(), workdir / "server.log"
    url = f"http://127.0.0.1:{port}"
    (workdir / "metrics").mkdir()
    proc = start_server(args, port, workdir / "metrics", log_path)
    try:
        report: dict[str, Any] = {"ready_after_s": round(wait_ready(url, proc, log_path), 1), "users": len(users)}
        run_wrk(url, users, args.connections, 3, workdir)  # warm-up
        before = scrape(url)
        report["saturation"] = run_wrk(url, users, args.connections, args.duration, workdir)
        report["saturation"]["steps"] = step_breakdown(before, after := scrape(url))
        report["open_loop"] = []
        for rate in args.rates:
            before = after
            result = asyncio.run(open_loop(port, users, rate, args.duration))
            result["steps"] = step_breakdown(before, after := scrape(url))
            report["open_loop"].append(result)
    finally:
        stop_server(proc)
    return report


def print_report(report: dict[str, Any]) -> bool:
    sat = report["saturation"]
    print(f"saturation ({sat['connections']} connections, wrk): {sat['requests_per_s']:.0f} req/s, "
          f"p50/p90/p99 {sat['latency_ms']['50']:.1f}/{sat['latency_ms']['90']:.1f}/{sat['latency_ms']['99']:.1f} ms, "
          f"non-2xx {sat['non_2xx']}, socket errors {sat['socket_errors']}")  # fmt: skip
    print(
        f"{'offered/s':>9} {'achieved':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'gen late p99':>12}"
    )
    for r in report["open_loop"]:
        lat = r["latency_ms"]
        print(f"{r['offered_per_s']:>9.0f} {r['achieved_per_s']:>9.1f} {lat[50]:>7.2f} {lat[95]:>7.2f} {lat[99]:>7.2f} "
              f"{r['errors']:>6} {r['generator']['send_late_p99_ms']:>9.2f} ms")  # fmt: skip
    print("per step at saturation (mean ms / p99 bucket ms):")
    for step, s in sat["steps"].items():
        print(f"  {step:<20} {s['mean_ms']} / <= {s['p99_le_ms']:g}")
    at_200 = [r for r in report["open_loop"] if r["offered_per_s"] == 200.0]
    ok = sat["requests_per_s"] >= GOAL_SATURATION_RPS and sat["non_2xx"] == 0 and not sat["socket_errors"]
    ok &= all(r["errors"] == 0 for r in report["open_loop"])
    ok &= bool(at_200) and at_200[0]["latency_ms"][99] <= GOAL_P99_MS_AT_200
    print("goals (>= 400 req/s, 0 errors, p99 <= 25 ms at 200 req/s):", "met" if ok else "NOT met")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        report = run(args, Path(tmp))
    ok = print_report(report)
    out = args.out or ArtifactPaths(args.data_dir).reports_dir / "bench_online.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report | {"goals_met": ok}, indent=2) + "\n")
    print(f"report: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
