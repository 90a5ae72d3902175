"""The streaming protocol over the online holdout, shared by the offline evaluation and the replay client.

Each selected holdout user's online ratings are walked in time order. Before rating ``j`` the
recommender is asked for a list; the rating is then applied to the user's state (``live``: posted as
an event, ``data_exchange_center.events.apply_events``) or not (``static``: the published state only).
Only positive ratings (label 1) are targets: next-item HitRate@K, NDCG@K (one relevant item: 1 /
log2(rank + 1)) and MRR (1 / rank, 0 beyond K) are averaged over those target steps.

Users: every ``every``-th user with an online positive, in ascending id order (``every=3``: a third).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.paths import ArtifactPaths

STREAM_K = 50
MODES = ("static", "live")
STREAMING_REPORT_FILE = "streaming.json"  # under paths.reports_dir: the offline figures the replay compares with


@dataclass(frozen=True)
class UserWalk:
    """One user's online ratings in time order."""

    userid: int
    items: np.ndarray  # (n,) int64
    ratings: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int8
    timestamps: np.ndarray  # (n,) int64

    @property
    def target_steps(self) -> np.ndarray:
        return np.flatnonzero(self.labels == 1)


def holdout_walks(samples: pd.DataFrame, every: int = 1) -> list[UserWalk]:
    """The walks of every ``every``-th user with an online positive (``samples`` as split by preprocess)."""
    online = samples[samples[S.SPLIT] == S.SPLIT_ONLINE].sort_values([S.USER_ID, S.SEQ], kind="stable")
    users = online[S.USER_ID].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    bounds = np.r_[starts, len(users)]
    columns = {c: online[c].to_numpy() for c in (S.ITEM_ID, S.RATING, S.LABEL, S.TIMESTAMP)}
    walks = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if columns[S.LABEL][lo:hi].max() < 1:
            continue
        walks.append(UserWalk(int(users[lo]), columns[S.ITEM_ID][lo:hi].astype(np.int64),
                              columns[S.RATING][lo:hi].astype(np.float32), columns[S.LABEL][lo:hi].astype(np.int8),
                              columns[S.TIMESTAMP][lo:hi].astype(np.int64)))  # fmt: skip
    return walks[:: max(1, every)]


def next_item_metrics(recommended: list[np.ndarray], targets: np.ndarray, k: int = STREAM_K) -> dict[str, float]:
    """HitRate@k, NDCG@k and MRR@k of one target per list, averaged over the lists."""
    ranks = np.full(len(targets), -1, dtype=np.int64)
    for i, (rec, target) in enumerate(zip(recommended, targets.tolist(), strict=True)):
        hit = np.flatnonzero(np.asarray(rec[:k]) == target)
        if len(hit):
            ranks[i] = hit[0]
    found = ranks >= 0
    safe = np.where(found, ranks, 0)
    ndcg = np.where(found, 1.0 / np.log2(safe + 2.0), 0.0)
    mrr = np.where(found, 1.0 / (safe + 1.0), 0.0)
    if not len(targets):
        return {"hit_rate": 0.0, "ndcg": 0.0, "mrr": 0.0, "n_events": 0}
    return {
        "hit_rate": round(float(found.mean()), 6),
        "ndcg": round(float(ndcg.mean()), 6),
        "mrr": round(float(mrr.mean()), 6),
        "n_events": len(targets),
    }


def event_id_of(userid: int, step: int, timestamp: int) -> str:
    """The replay's event id of one holdout rating (a re-run repeats it, so the log can tell)."""
    return f"replay-{int(userid)}-{int(step)}-{int(timestamp)}"


def streaming_report_path(paths: ArtifactPaths) -> Path:
    return paths.reports_dir / STREAMING_REPORT_FILE
