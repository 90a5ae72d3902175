"""The report's per-stage figures: each channel alone, merged, ranked, and the lift over the best channel."""

from __future__ import annotations

import numpy as np
import pytest

from offline.evaluate.s1_topk_report import stage_metrics

pytestmark = pytest.mark.unit


def test_stage_metrics_name_the_best_channel_and_the_lift() -> None:
    relevant = [np.array([1]), np.array([2])]
    channel_lists = {
        "popularity": [np.array([9, 8]), np.array([9, 8])],
        "i2i": [np.array([5, 1]), np.array([2])],  # hits at rank 2 and rank 1
        "vector": [np.array([7]), np.array([7])],  # no hit (filled with popularity: none either)
        "term": [np.zeros(0, np.int64), np.zeros(0, np.int64)],  # no term channel: not reported
    }
    ranked = [np.array([1, 5]), np.array([2, 9])]  # both hits at rank 1
    out = stage_metrics(channel_lists, [np.array([5, 1, 7, 9]), np.array([2, 7, 9])], ranked, relevant)
    assert "term" not in out and out["vector"]["recall"] == 0.0
    assert out["best_channel"] == "i2i"
    expected_i2i_ndcg = (1 / np.log2(3) + 1.0) / 2
    assert out["i2i"]["ndcg"] == pytest.approx(expected_i2i_ndcg, abs=1e-4)
    assert out["ranked"]["ndcg"] == pytest.approx(1.0)
    assert out["ranked_lift_over_best_channel"] == pytest.approx(1.0 / expected_i2i_ndcg, abs=1e-3)
    assert out["merged"]["recall_at_200"] == 1.0
