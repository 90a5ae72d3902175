"""Top-K metrics on the online holdout: Recall@K, HitRate@K and NDCG@K, averaged over users.

The offline report and the online replay (``online/main/s2_client.py --replay``) both use these.

Ground truth per user: the online-holdout items with a positive label. Recommendations never include
the user's offline items (the chain filters them), so a recommended list is judged as it is served.
Recall@K is hits / number of relevant items; NDCG@K uses binary gains with the ideal DCG of
``min(K, n_relevant)`` hits.

On a large dataset every evaluation (the holdout, and the validation setups that select defaults) takes
at most ``EVAL_MAX_USERS`` users, the same ones in every stage and in the replay: those with the
smallest stable hash of the user id (``evaluation_sample``). MovieLens-1M has fewer, so all of them.
"""

from __future__ import annotations

import numpy as np

EVAL_MAX_USERS = 10_000  # users per evaluation: enough for a standard error of about 0.004 on Recall@50
_SAMPLE_MULTIPLIER = np.uint64(0xD6E8FEB86659FD93)  # not the watch head's fit/select hash (chain halves)


def hash_order(user_ids: np.ndarray) -> np.ndarray:
    """Positions of ``user_ids`` in the order of a multiplicative hash of the id: a stable pseudo-random
    order (the same across stages, runs and machines) from which samples of users are taken."""
    hashed = (np.asarray(user_ids, dtype=np.int64).astype(np.uint64) + np.uint64(1)) * _SAMPLE_MULTIPLIER
    return np.argsort(hashed, kind="stable")


def evaluation_sample(user_ids: np.ndarray, max_users: int = EVAL_MAX_USERS) -> np.ndarray:
    """(n,) bool: the users an evaluation keeps, all of them up to ``max_users``, else the first ``max_users``
    in ``hash_order``: the same users in every stage and in the replay."""
    keep = np.ones(len(user_ids), dtype=bool)
    if len(user_ids) > max_users:
        keep[:] = False
        keep[hash_order(user_ids)[:max_users]] = True
    return keep


def topk_metrics(recommended: list[np.ndarray], relevant: list[np.ndarray], k: int) -> dict[str, float]:
    """Mean Recall@k, HitRate@k and NDCG@k over users with at least one relevant item."""
    discounts = 1.0 / np.log2(np.arange(k) + 2)  # (k,)
    recalls, hits_any, ndcgs = [], [], []
    for rec, rel in zip(recommended, relevant, strict=True):
        if len(rel) == 0:
            continue
        hits = np.isin(rec[:k], rel)  # (<=k,)
        n_hits = hits.sum()
        recalls.append(n_hits / len(rel))
        hits_any.append(float(n_hits > 0))
        ndcgs.append((discounts[: len(hits)] * hits).sum() / discounts[: min(k, len(rel))].sum())
    if not recalls:
        return {"recall": 0.0, "hit_rate": 0.0, "ndcg": 0.0, "n_users": 0}
    return {
        "recall": round(float(np.mean(recalls)), 6),
        "hit_rate": round(float(np.mean(hits_any)), 6),
        "ndcg": round(float(np.mean(ndcgs)), 6),
        "n_users": len(recalls),
    }
