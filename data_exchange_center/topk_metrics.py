"""Top-K metrics on the online holdout: Recall@K, HitRate@K and NDCG@K, averaged over users.

The offline report and the online replay (``online/main/s2_client.py --replay``) both use these.

Ground truth per user: the online-holdout items with a positive label. Recommendations never include
the user's offline items (the chain filters them), so a recommended list is judged as it is served.
Recall@K is hits / number of relevant items; NDCG@K uses binary gains with the ideal DCG of
``min(K, n_relevant)`` hits.
"""

from __future__ import annotations

import numpy as np


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
