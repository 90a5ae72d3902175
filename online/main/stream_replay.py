"""The streaming replay against a running service (``s2_client.py --replay --stream``).

Each selected holdout user (``data_exchange_center.streaming.holdout_walks``) is walked in time order:
before each positive rating the service is asked for a list (``POST /ml/rec``); in the ``live`` walk
every rating is then posted as an event (``POST /ml/events``, event id ``streaming.event_id_of``), in
the ``static`` walk nothing is posted. Users are walked in parallel, each user's steps in order.

The live walk needs an event log without this replay's events (a second live walk would see the first
one's future ratings): a repeated event id (``duplicates`` > 0 in the 202 reply) stops it with a
message.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_exchange_center.streaming import UserWalk, event_id_of, next_item_metrics

Recommend = Callable[[int, int], dict[str, Any]]
RETRIES = 30  # a 503 (shed, or a worker still loading after another said ready) is retried for up to ~50 s
RETRY_PAUSE_S = 0.2
MAX_RETRY_PAUSE_S = 2.0


class ReplayLogNotEmpty(RuntimeError):
    """The event log already holds this replay's events."""


class EventClient:
    """``POST /ml/events`` with one keep-alive session per thread."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/ml/events"
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout_s = timeout_s
        self._local = threading.local()

    def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        reply = session.post(self.url, json=events, headers=self.headers, timeout=self.timeout_s)
        if reply.status_code != 202:
            raise RuntimeError(f"POST /ml/events: HTTP {reply.status_code}: {reply.text[:300]}")
        return dict(reply.json())


@dataclass
class WalkResult:
    lists: list[np.ndarray] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures' messages

    def metrics(self, k: int) -> dict[str, Any]:
        targets = np.array(self.targets, dtype=np.int64)
        out: dict[str, Any] = next_item_metrics(self.lists, targets, k)
        names = np.array(self.variants)
        out["by_variant"] = {
            name: next_item_metrics(
                [x for x, n in zip(self.lists, self.variants, strict=True) if n == name], targets[names == name], k
            )  # fmt: skip
            for name in sorted(set(self.variants))
        }
        return out


def event_body(walk: UserWalk, step: int) -> dict[str, Any]:
    return {
        "userid": walk.userid,
        "itemid": int(walk.items[step]),
        "rating": float(walk.ratings[step]),
        "timestamp": int(walk.timestamps[step]),
        "event_id": event_id_of(walk.userid, step, int(walk.timestamps[step])),
    }


def with_retries(call: Callable[[], dict[str, Any]], tries: int = RETRIES) -> dict[str, Any]:
    """``call()``, again after a pause when the service answered 503 (it sheds load instead of queueing)."""
    for attempt in range(tries):
        try:
            return call()
        except RuntimeError as exc:
            if "HTTP 503" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(min(RETRY_PAUSE_S * (attempt + 1), MAX_RETRY_PAUSE_S))
    raise AssertionError("unreachable")


def walk_user(walk: UserWalk, recommend: Recommend, post: Callable[[list[dict[str, Any]]], dict[str, Any]] | None,
              k: int) -> list[tuple[np.ndarray, int, str]]:  # fmt: skip
    """(served list, target, variant) before every positive step; posts each step when ``post`` is given."""
    out = []
    for step in range(len(walk.items)):
        if walk.labels[step] == 1:
            body = with_retries(lambda: recommend(walk.userid, k))
            served = np.array([entry["itemid"] for entry in body["item_list"]], dtype=np.int64)
            out.append((served, int(walk.items[step]), str(body.get("variant", ""))))
        if post is not None:
            reply = with_retries(functools.partial(post, [event_body(walk, step)]))
            if reply.get("duplicates"):
                raise ReplayLogNotEmpty(
                    f"the event log already holds the replay's event for user {walk.userid}: run the live walk "
                    "against an event log without it (a fresh RECSYS_EVENTS_PATH or Redis namespace)"
                )
    return out


def stream_walk(walks: list[UserWalk], recommend: Recommend, post: Callable[[list[dict[str, Any]]], dict[str, Any]]
                | None, k: int, workers: int) -> WalkResult:  # fmt: skip
    result = WalkResult()

    def one(walk: UserWalk) -> list[tuple[np.ndarray, int, str]]:
        try:
            return walk_user(walk, recommend, post, k)
        except ReplayLogNotEmpty:
            raise
        except Exception as exc:  # counted: one failing user must not hide the others
            result.failures += 1
            if len(result.errors) < 5:
                result.errors.append(f"user {walk.userid}: {exc}")
            return []

    with ThreadPoolExecutor(workers) as pool:
        for steps in pool.map(one, walks):
            for served, target, variant in steps:
                result.lists.append(served)
                result.targets.append(target)
                result.variants.append(variant)
    return result


def compare_streaming(served: dict[str, dict[str, Any]], offline: dict[str, Any] | None, tolerance: float) -> bool:
    """Print served vs offline per mode (and variant); True when every figure is within ``tolerance``."""
    ok = offline is not None
    print(f"{'walk':<8} {'variant':<12} {'metric':<9} {'served':>10} {'offline':>10} {'diff':>9}")
    for mode, figures in served.items():
        rows = [("all", figures)] + sorted(figures.get("by_variant", {}).items())
        for variant, values in rows:
            reference = None if offline is None else offline.get(mode, {})
            if reference is not None and variant != "all":
                reference = reference.get("by_variant", {}).get(variant)
            for name in ("hit_rate", "ndcg", "mrr"):
                mine = float(values[name])
                theirs = None if reference is None else reference.get(name)
                diff = "" if theirs is None else f"{mine - float(theirs):+9.6f}"
                ok &= theirs is not None and abs(mine - float(theirs)) <= tolerance
                shown = "-" if theirs is None else f"{float(theirs):.6f}"
                print(f"{mode:<8} {variant:<12} {name:<9} {mine:>10.6f} {shown:>10} {diff:>9}")
    static, live = served.get("static", {}).get("hit_rate"), served.get("live", {}).get("hit_rate")
    if static and live is not None:
        print(f"live / static HitRate@K: {live / static:.3f}")
    print("served == offline streaming within", tolerance if ok else f"{tolerance}: NO")
    return bool(ok)
