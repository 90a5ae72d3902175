"""The online holdout as the top-K evaluation sees it, and a helper to evaluate a recommender on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_exchange_center import schema as S
from data_exchange_center.topk_metrics import evaluation_sample, topk_metrics
from offline.common.user_states import split_by_user

TOPK = 50
MERGED_RECALL_K = 200


@dataclass(frozen=True)
class Holdout:
    user_ids: np.ndarray  # (n_users,) users with at least one online positive (``evaluation_sample``)
    relevant: list[np.ndarray]  # per user: online-holdout positives
    seen: dict[int, np.ndarray]  # per user: offline items (sorted), never recommended

    @classmethod
    def from_samples(cls, samples: pd.DataFrame) -> Holdout:
        online = samples[(samples[S.SPLIT] == S.SPLIT_ONLINE) & (samples[S.LABEL] == 1)]
        user_ids, relevant = split_by_user(online, S.ITEM_ID)
        keep = evaluation_sample(user_ids)
        user_ids, relevant = user_ids[keep], [r for r, k in zip(relevant, keep, strict=True) if k]
        seen_users, seen = split_by_user(samples[samples[S.SPLIT] != S.SPLIT_ONLINE], S.ITEM_ID)
        return cls(user_ids, relevant, dict(zip(seen_users.tolist(), seen, strict=True)))

    def seen_of(self, user_id: int) -> np.ndarray:
        return self.seen.get(int(user_id), np.zeros(0, dtype=np.int64))


def evaluate_recommender(
    holdout: Holdout, recommend: Callable[[int], np.ndarray], k: int = TOPK, desc: str = "evaluate"
) -> dict[str, float]:
    """Top-``k`` metrics of ``recommend(user_id) -> ranked items`` over the holdout users."""
    recommended = [recommend(int(u)) for u in tqdm(holdout.user_ids, desc=desc, mininterval=2, leave=False)]
    return topk_metrics(recommended, holdout.relevant, k)
