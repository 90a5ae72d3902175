"""Call the recommendation service: print the lists of some users, or replay the online holdout.

    python online/main/s2_client.py --users 1 2 3             # each user's last rated titles and list, with reasons
    python online/main/s2_client.py --replay                  # every holdout user: Recall/HitRate/NDCG@50
    python online/main/s2_client.py --replay --stream         # streaming: static walk, then live (posts events)

``--replay`` sends every user with at least one positive in the online holdout
(``preprocess/samples.parquet``, split "online", label 1) to the running service, computes Recall@50,
HitRate@50 and NDCG@50 of the served lists the way the offline evaluation does
(``data_exchange_center/topk_metrics.py``), prints them beside ``reports/metrics.json``'s ``topk.ranked``
and exits 1 when any differs by more than ``--tolerance`` (or when a request failed).

``--replay --stream`` walks every ``--every``-th holdout user's online ratings in time order, asking for
a list before each positive one: first without posting (static), then posting each rating to
``POST /ml/events`` after its list (live; needs an event log without this replay's events). It prints
next-item HitRate/NDCG/MRR@50 of both walks (per experiment variant too) beside
``reports/streaming.json`` (``offline/evaluate/s2_streaming_report.py``) and exits 1 when any differs by
more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python online/main/s2_client.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_exchange_center import schema as S
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import evaluation_sample, topk_metrics

DEFAULT_URL = "http://127.0.0.1:5000"
TOPK = 50
RETRIES_503 = 3  # a 503 with Retry-After is sent again this many times
MAX_RETRY_WAIT_S = 2.0
TOLERANCE = 0.002
METRICS = ("recall", "hit_rate", "ndcg")


class RecClient:
    """``POST /ml/rec`` with one keep-alive session per thread."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/ml/rec"
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _session(self) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def recommend(self, userid: int, size: int = TOPK, **options: Any) -> dict[str, Any]:
        """``options``: ``explain=True``, ``fields=[...]`` (see the OpenAPI document). A 503 with
        ``Retry-After`` (not ready yet on this worker, or at capacity) is sent again after that wait, up to
        ``RETRIES_503`` times."""
        for attempt in range(RETRIES_503 + 1):
            reply = self._session().post(self.url, json={"userid": userid, "size": size, **options},
                                         headers=self.headers, timeout=self.timeout_s)  # fmt: skip
            retry_after = reply.headers.get("Retry-After", "")
            if reply.status_code != 503 or not retry_after.isdigit() or attempt == RETRIES_503:
                break
            time.sleep(min(float(retry_after), MAX_RETRY_WAIT_S))
        if reply.status_code != 200:
            raise RuntimeError(f"user {userid}: HTTP {reply.status_code}: {reply.text[:300]}")
        return reply.json()

    def history(self, userid: int, size: int) -> dict[str, Any] | None:
        """The user's latest rated items, or None when the server has no history endpoint."""
        url = self.url.removesuffix("/ml/rec") + f"/ml/users/{userid}/history"
        reply = self._session().get(url, params={"size": size}, headers=self.headers, timeout=self.timeout_s)
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise RuntimeError(f"user {userid} history: HTTP {reply.status_code}: {reply.text[:300]}")
        return reply.json()


def holdout_positives(paths: ArtifactPaths) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users with an online-holdout positive (ascending; the offline evaluation's sample of them) and, per
    user, those items."""
    import pandas as pd

    samples = pd.read_parquet(paths.samples_path, columns=[S.USER_ID, S.ITEM_ID, S.LABEL, S.SPLIT])
    online = samples[(samples[S.SPLIT] == S.SPLIT_ONLINE) & (samples[S.LABEL] == 1)]
    groups = online.groupby(S.USER_ID, sort=True)[S.ITEM_ID]
    users = np.array(list(groups.groups.keys()), dtype=np.int64)
    keep = evaluation_sample(users)
    return users[keep], [np.asarray(group, dtype=np.int64) for (_, group), k in zip(groups, keep, strict=True) if k]


def replay(client: RecClient, paths: ArtifactPaths, workers: int, k: int = TOPK) -> tuple[dict[str, float], int]:
    """Send every holdout user; returns the metrics of the served lists and the number of failed requests."""
    users, relevant = holdout_positives(paths)
    failures = 0

    def served(userid: int) -> np.ndarray:
        nonlocal failures
        try:
            body = client.recommend(int(userid), k)
        except Exception as exc:  # counted and reported: one bad reply must not hide the others
            failures += 1
            print(f"request failed: {exc}", file=sys.stderr)
            return np.zeros(0, np.int64)
        return np.array([entry["itemid"] for entry in body["item_list"]], dtype=np.int64)

    with ThreadPoolExecutor(workers) as pool:
        recommended = list(pool.map(served, users.tolist()))
    return topk_metrics(recommended, relevant, k), failures


def compare_with_offline(served: dict[str, float], paths: ArtifactPaths, tolerance: float) -> bool:
    """Print served vs offline ``topk.ranked``; True when every metric is within ``tolerance``."""
    if not paths.metrics_path.exists():
        print(f"no {paths.metrics_path}: run offline/evaluate/s1_topk_report.py to compare", file=sys.stderr)
        return False
    offline = json.loads(paths.metrics_path.read_text()).get("topk", {}).get("ranked")
    if not offline:
        print(f"{paths.metrics_path} has no topk.ranked entry", file=sys.stderr)
        return False
    print(f"{'metric@' + str(TOPK):<14} {'served':>10} {'offline':>10} {'diff':>9}")
    ok = True
    for name in METRICS:
        diff = served[name] - float(offline[name])
        ok &= abs(diff) <= tolerance
        print(f"{name:<14} {served[name]:>10.6f} {float(offline[name]):>10.6f} {diff:>+9.6f}")
    print(f"{'users':<14} {served['n_users']:>10} {offline.get('n_users', '?'):>10}")
    print("served == offline within", tolerance if ok else f"{tolerance}: NO")
    return ok


def wait_until_ready(url: str, timeout_s: float) -> None:
    """Poll ``GET /ready`` until the service has loaded every backend (a fresh server loads for a while)."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url.rstrip("/") + "/ready", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} is not ready after {timeout_s:.0f} s (see GET /ready)")
        time.sleep(0.5)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _title(entry: dict[str, Any]) -> str:
    title = entry.get("title") or f"item {entry['itemid']}"
    return f"{title} ({entry['year']})" if entry.get("year") else title


def format_user(userid: int, body: dict[str, Any], history: dict[str, Any] | None, width: int = 120) -> str:
    """One user as a person reads it: the last rated titles, then the list with genres, score and reason."""
    versions = ", ".join(f"{k} {v}" for k, v in body.get("versions", {}).items())
    chain_ms = sum(body.get("timings_ms", {}).values())
    lines = [f"user {userid}: {len(body['item_list'])} items in {chain_ms:.1f} ms; degraded: "
             f"{', '.join(body.get('degraded') or []) or 'none'}; versions: {versions}"]  # fmt: skip
    if history is not None:
        rated = [_title(e) + (" ♥" if e.get("liked") else "") for e in history["items"]]
        known = "" if history["known"] else " (unknown user: the popular items)"
        lines.append(_cut(f"  last rated{known}: " + (" · ".join(rated) or "nothing yet"), width))
    title_w, genre_w = 32, 22
    lines.append(f"  {'#':>3}  {'title':<{title_w}}  {'genres':<{genre_w}}  {'score':>7}  reason")
    for rank, entry in enumerate(body["item_list"], start=1):
        genres = "|".join(entry.get("genres") or [])
        reason = entry.get("reason")
        why = f"{reason['channel']}: {reason['summary']}" if reason else ""
        row = f"  {rank:>3}  {_cut(_title(entry), title_w):<{title_w}}  {_cut(genres, genre_w):<{genre_w}}  "
        lines.append(row + f"{entry['score']:>7.4f}  {why}")  # the reason in full
    return "\n".join(lines)


def print_user(client: RecClient, userid: int, size: int, history_size: int = 5) -> None:
    body = client.recommend(userid, size, explain=True)
    print(format_user(userid, body, client.history(userid, history_size)))
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="the service (default %(default)s)")
    parser.add_argument("--users", type=int, nargs="*", default=[], help="user ids whose lists to print")
    parser.add_argument("--size", type=int, default=10, help="items per list for --users (default %(default)s)")
    parser.add_argument("--replay", action="store_true", help="replay the online holdout and compare metrics")
    parser.add_argument("--stream", action="store_true",
                        help="with --replay: the streaming walk (static, then live posting events)")  # fmt: skip
    parser.add_argument("--every", type=int, default=1, help="--stream: every N-th holdout user (default 1: all)")
    parser.add_argument("--data-dir", type=Path, default=None, help="artifacts (default: $RECSYS_DATA_DIR)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests of --replay (default 4)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="allowed metric difference")
    parser.add_argument("--ready-timeout", type=float, default=120.0,
                        help="seconds to wait for GET /ready before sending (default %(default)s)")  # fmt: skip
    parser.add_argument("--api-key", default=os.environ.get("RECSYS_API_KEY") or None,
                        help="X-API-Key header (default: $RECSYS_API_KEY)")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.users and not args.replay:
        parser.error("give --users ID [ID ...] and/or --replay")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = RecClient(args.url, args.api_key)
    try:
        wait_until_ready(args.url, args.ready_timeout)
        for userid in args.users:
            print_user(client, userid, args.size)
    except Exception as exc:
        print(f"s2_client: {exc}", file=sys.stderr)
        return 1
    if not args.replay:
        return 0
    paths = ArtifactPaths.from_env(args.data_dir)
    if args.stream:
        return stream(args, client, paths)
    started = time.perf_counter()
    try:
        served, failures = replay(client, paths, args.workers)
    except FileNotFoundError as exc:
        print(f"s2_client: {exc}: run the offline stages first", file=sys.stderr)
        return 1
    print(f"replayed {served['n_users']} holdout users in {time.perf_counter() - started:.1f} s, {failures} failed")
    ok = compare_with_offline(served, paths, args.tolerance)
    return 0 if ok and failures == 0 else 1


def stream(args: argparse.Namespace, client: RecClient, paths: ArtifactPaths) -> int:
    """The streaming replay: static walk, live walk, compared with the offline streaming report."""
    import pandas as pd

    from data_exchange_center.streaming import holdout_walks, streaming_report_path
    from online.main.stream_replay import EventClient, ReplayLogNotEmpty, compare_streaming, stream_walk

    walks = holdout_walks(pd.read_parquet(paths.samples_path), args.every)
    events = EventClient(args.url, args.api_key)
    served, failures = {}, 0
    for mode, post in (("static", None), ("live", events.post)):
        started = time.perf_counter()
        try:
            result = stream_walk(walks, client.recommend, post, TOPK, args.workers)
        except ReplayLogNotEmpty as exc:
            print(f"s2_client: {exc}", file=sys.stderr)
            return 1
        served[mode], failures = result.metrics(TOPK), failures + result.failures
        for error in result.errors:
            print(f"  failed: {error}", file=sys.stderr)
        print(f"{mode} walk: {len(walks)} users, {served[mode]['n_events']} positive events, "
              f"{time.perf_counter() - started:.1f} s, {result.failures} users failed")  # fmt: skip
    report_path = streaming_report_path(paths)
    offline = json.loads(report_path.read_text()) if report_path.exists() else None
    if offline is None:
        print(f"no {report_path}: run offline/evaluate/s2_streaming_report.py to compare", file=sys.stderr)
    elif offline.get("every") != args.every:
        print(f"{report_path} is for --every {offline.get('every')}, not {args.every}", file=sys.stderr)
        offline = None
    ok = compare_streaming(served, offline, args.tolerance)
    return 0 if ok and failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
