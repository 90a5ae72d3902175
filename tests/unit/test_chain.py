"""The chain's pure steps: item-to-item scores, top-k, merging, final score; and the top-K metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import write_json
from data_exchange_center.item_index import DENSE_ID_LIMIT, ItemIndex, neighbor_matrix, not_in, top_k
from data_exchange_center.topk_metrics import topk_metrics

pytestmark = pytest.mark.unit


def test_i2i_scores_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    neighbors = rng.integers(1, 30, size=(6, 8))
    neighbors[2, 5:] = -1  # padding
    weights = rng.random((6, 8)).astype(np.float32)
    triggers = rng.random(6).astype(np.float32)
    items, scores = chain.i2i_scores(neighbors, weights, triggers)
    expected: dict[int, float] = {}
    for t in range(6):
        for j in range(8):
            if neighbors[t, j] >= 0:
                expected[int(neighbors[t, j])] = expected.get(int(neighbors[t, j]), 0.0) + weights[t, j] * triggers[t]
    assert items.tolist() == sorted(expected)
    np.testing.assert_allclose(scores, [expected[i] for i in items.tolist()], rtol=1e-5)


@pytest.mark.parametrize("offset", [0, DENSE_ID_LIMIT])  # ids in dense tables, and ids sorted
def test_i2i_scores_and_exclusion_are_the_same_for_small_and_large_ids(offset: int) -> None:
    rng = np.random.default_rng(1)
    neighbors = rng.integers(0, 400, size=(50, 40))
    neighbors[rng.random(neighbors.shape) < 0.1] = -1
    weights = rng.random((50, 40)).astype(np.float32)
    triggers = rng.random(50).astype(np.float32)
    small_items, small_scores = chain.i2i_scores(neighbors, weights, triggers)
    shifted = np.where(neighbors >= 0, neighbors + offset, -1)
    items, scores = chain.i2i_scores(shifted, weights, triggers)
    assert (items - offset).tolist() == small_items.tolist()
    assert scores.tolist() == small_scores.tolist()  # the same additions in the same order: bit-identical
    exclude = items[::3]
    kept = not_in(items, exclude)
    assert kept.tolist() == (~np.isin(items, exclude)).tolist()
    assert not_in(items[:0], exclude).size == 0 and not_in(items, exclude[:0]).all()


def test_top_k_excludes_and_breaks_ties_by_id() -> None:
    items = np.array([5, 3, 9, 1, 7])
    scores = np.array([1.0, 2.0, 2.0, 0.5, 3.0], dtype=np.float32)
    got_items, got_scores = top_k(items, scores, 3, exclude=np.array([7]))
    assert got_items.tolist() == [3, 9, 5]
    assert got_scores.tolist() == [2.0, 2.0, 1.0]
    assert top_k(items, scores, 0)[0].size == 0


def test_trigger_weights() -> None:
    assert chain.trigger_weights(np.array([1, 0, 1])).tolist() == pytest.approx(
        [chain.TRIGGER_WEIGHT_LIKED, chain.TRIGGER_WEIGHT_OTHER, chain.TRIGGER_WEIGHT_LIKED]
    )


def test_merge_keeps_first_channel_and_attaches_i2i_scores() -> None:
    results = {
        "popularity": (np.array([1, 2, 3]), np.array([9.0, 8.0, 7.0])),
        "i2i": (np.array([3, 4]), np.array([0.9, 0.5])),
        "term": (np.array([4, 5]), np.array([1.0, 1.0])),
    }
    merged = chain.merge_candidates(results, np.array([3, 4, 8]), np.array([0.9, 0.5, 0.1], dtype=np.float32))
    assert merged.items.tolist() == [3, 4, 5, 1, 2]  # channel order i2i, vector, term, popularity
    assert merged.channel.tolist() == ["i2i", "i2i", "term", "popularity", "popularity"]
    assert merged.i2i_score.tolist() == pytest.approx([0.9, 0.5, 0.0, 0.0, 0.0])
    assert merged.counts == {"i2i": 2, "vector": 0, "term": 1, "popularity": 2}


def test_final_score_combines_watch_and_like() -> None:
    results = {
        "i2i": (np.array([10, 11, 12]), np.array([1.0, 0.8, 0.1])),
        "popularity": (np.array([13]), np.array([5.0])),
    }
    merged = chain.merge_candidates(results, np.array([10, 11, 12]), np.array([1.0, 0.8, 0.1], dtype=np.float32))
    like = np.array([0.2, 0.9, 0.9, 0.9], dtype=np.float32)
    scores = chain.final_scores(merged, like, chain.RankingPolicy(like_weight=1.0, prior_weight=0.01))
    ranked, _ = chain.rank_and_cut(merged, scores, 3)
    assert ranked.tolist() == [11, 10, 12]  # a liked strong neighbour beats a disliked stronger one
    only_watch = chain.final_scores(merged, like, chain.RankingPolicy(like_weight=0.0))
    assert chain.rank_and_cut(merged, only_watch, 1)[0].tolist() == [10]


def test_recall_channels_filter_seen_items() -> None:
    index = tiny_index()
    user = chain.UserState(["Comedy"], np.array([1.0, 0.0], np.float32), np.array([1, 2]), np.array([1, 0], np.int8))
    results, i2i_all = chain.recall_channels(index, user, {"i2i": 5, "vector": 5, "term": 5, "popularity": 5})
    for items, _ in results.values():
        assert not set(items.tolist()) & {1, 2}
    assert results["term"][0].tolist() == [4, 3]  # comedies by popularity
    assert results["vector"][0][0] == 3
    assert set(i2i_all[0].tolist()) == {2, 3, 4}


def tiny_index() -> ItemIndex:
    item_ids = np.array([1, 2, 3, 4])
    neighbors = pd.DataFrame({S.ITEM_ID: [1, 1, 2], S.NEIGHBOR: [3, 4, 2], S.WEIGHT: [0.5, 0.2, 0.1]})
    nbr_items, nbr_weights = neighbor_matrix(neighbors, item_ids)
    return ItemIndex(
        item_ids=item_ids,
        popularity=np.array([10.0, 9.0, 1.0, 5.0], np.float32),
        term_names=["Comedy", "Drama"],
        term_flags=np.array([[1, 0], [0, 1], [1, 0], [1, 1]], dtype=bool),
        vector_ids=item_ids,
        vectors=np.array([[0.0, 1.0], [0.1, 0.0], [2.0, 0.0], [1.0, 0.0]], np.float32),
        neighbor_items=nbr_items,
        neighbor_weights=nbr_weights,
    )


def test_topk_metrics_golden_values() -> None:
    recommended = [np.array([1, 2, 3]), np.array([4, 5, 6]), np.array([7])]
    relevant = [np.array([2, 9]), np.array([8]), np.array([], dtype=np.int64)]
    m = topk_metrics(recommended, relevant, 3)
    assert m["n_users"] == 2  # users without relevant items are not averaged
    assert m["recall"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["hit_rate"] == pytest.approx(0.5)
    idcg = 1 + 1 / np.log2(3)
    assert m["ndcg"] == pytest.approx((1 / np.log2(3)) / idcg / 2, abs=1e-6)  # reported to 6 digits


def test_trigger_policy_weights_golden_values() -> None:
    labels = np.array([1, 0, 1, 1], dtype=np.int8)  # oldest first
    plain = chain.TriggerPolicy(max_triggers=3)
    assert plain.weights(labels).tolist() == pytest.approx([chain.TRIGGER_WEIGHT_OTHER, 1.0, 1.0])
    decayed = chain.TriggerPolicy(max_triggers=10, half_life=1.0, unliked_weight=0.5)
    assert decayed.weights(labels).tolist() == pytest.approx([0.125, 0.5 * 0.25, 0.5, 1.0])
    assert chain.TriggerPolicy(max_triggers=0).weights(labels).size == 0


def test_trigger_policy_weights_equal_brute_force() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=40)
    policy = chain.TriggerPolicy(max_triggers=25, half_life=5.0, unliked_weight=0.4)
    kept = labels[-25:]
    expected = [(1.0 if kept[j] else 0.4) * 0.5 ** ((len(kept) - 1 - j) / 5.0) for j in range(len(kept))]
    np.testing.assert_allclose(policy.weights(labels), expected, rtol=1e-6)


def test_chain_parameters_round_trip_and_defaults(tmp_path: Path) -> None:
    i2i_path, policy_path = tmp_path / "i2i.json", tmp_path / "policy.json"
    assert chain.read_chain_parameters(i2i_path, policy_path) == (chain.TriggerPolicy(), chain.RankingPolicy())
    triggers = chain.TriggerPolicy(max_triggers=1000, half_life=5.0, unliked_weight=0.5)
    write_json(triggers.to_dict(), i2i_path)
    write_json(chain.RankingPolicy(like_weight=0.5).to_dict(), policy_path)
    assert chain.read_chain_parameters(i2i_path, policy_path) == (triggers, chain.RankingPolicy(like_weight=0.5))


def test_merge_attaches_vector_scores_of_vector_hits_only() -> None:
    results = {
        "i2i": (np.array([5, 6]), np.array([2.0, 1.0], dtype=np.float32)),
        "vector": (np.array([7, 5]), np.array([3.0, 1.5], dtype=np.float32)),
        "popularity": (np.array([8]), np.array([9.0], dtype=np.float32)),
    }
    merged = chain.merge_candidates(results, np.array([5, 6]), np.array([2.0, 1.0], dtype=np.float32))
    assert merged.items.tolist() == [5, 6, 7, 8]
    np.testing.assert_array_equal(merged.vector_score, np.array([1.5, np.nan, 3.0, np.nan], dtype=np.float32))


def test_final_score_adds_relative_vector_probability_golden_values() -> None:
    candidates = chain.Candidates(
        items=np.array([1, 2, 3]),
        i2i_score=np.array([2.0, 1.0, 0.0], dtype=np.float32),
        channel=np.array(["i2i", "i2i", "vector"], dtype=object),
        rank_in_channel=np.array([0, 1, 0]),
        vector_score=np.array([np.nan, 0.0, np.log(4.0)], dtype=np.float32),
    )
    like = np.array([1.0, 0.5, 1.0])
    policy = chain.RankingPolicy(like_weight=1.0, prior_weight=0.0, vector_weight=2.0)
    # watch = i2i / 2 + 2 * exp(vector - log 4): [1, 0.5 + 2 * 0.25, 0 + 2 * 1]; times like
    np.testing.assert_allclose(chain.final_scores(candidates, like, policy), [1.0, 0.5, 2.0], rtol=1e-6)
    off = chain.RankingPolicy(like_weight=1.0, prior_weight=0.0)  # vector weight 0: the item-to-item order
    np.testing.assert_allclose(chain.final_scores(candidates, like, off), [1.0, 0.25, 0.0], rtol=1e-6)


def test_lookup_scores_equal_brute_force() -> None:
    rng = np.random.default_rng(4)
    hits = rng.choice(100, size=30, replace=False)
    scores = rng.normal(size=30).astype(np.float32)
    items = rng.integers(0, 100, size=50)
    got = chain.lookup_scores(hits, scores, items)
    expected = [scores[list(hits).index(i)] if i in hits else np.nan for i in items]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))


def test_candidate_evidence_golden_values() -> None:
    candidates = chain.Candidates(
        items=np.array([1, 2, 3, 4]),
        i2i_score=np.array([2.0, 1.0, 0.0, 0.0], dtype=np.float32),
        channel=np.array(["i2i", "i2i", "vector", "popularity"], dtype=object),
        rank_in_channel=np.array([0, 1, 0, 3]),
        vector_score=np.array([np.nan, 0.0, np.log(4.0), np.nan], dtype=np.float32),
    )
    evidence = chain.candidate_evidence(candidates)
    assert evidence.shape == (4, len(chain.EVIDENCE_FIELDS)) and evidence.dtype == np.float32
    column = {name: evidence[:, j] for j, name in enumerate(chain.EVIDENCE_FIELDS)}
    np.testing.assert_allclose(column["ev_i2i_relative"], [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(column["ev_i2i_log"], np.log1p([2.0, 1.0, 0.0, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(column["ev_vector_relative"], [0.0, 0.25, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(column["ev_vector_gap"], [1.0, np.log(4.0) / 10, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(column["ev_vector_hit"], [0, 1, 1, 0])
    np.testing.assert_allclose(column["ev_channel_prior"], [1.0, 0.5, 1.0, 0.25])
    np.testing.assert_allclose(column["ev_channel_rank_log"], np.log1p([0, 1, 0, 3]) / 6, rtol=1e-6)
    np.testing.assert_array_equal(column["ev_channel_i2i"], [1, 1, 0, 0])
    np.testing.assert_array_equal(column["ev_channel_popularity"], [0, 0, 0, 1])
    empty = chain.merge_candidates({}, np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert chain.candidate_evidence(empty).shape == (0, len(chain.EVIDENCE_FIELDS))


def test_a_ranker_final_policy_serves_the_rankers_output(tmp_path: Path) -> None:
    candidates = chain.Candidates(
        items=np.array([1, 2, 3]),
        i2i_score=np.array([2.0, 1.0, 0.0], dtype=np.float32),
        channel=np.array(["i2i", "i2i", "vector"], dtype=object),
        rank_in_channel=np.array([0, 1, 0]),
        vector_score=np.array([np.nan, 0.0, 1.0], dtype=np.float32),
    )
    policy = chain.RankingPolicy(ranker_final=1)
    scores = np.array([0.1, 0.7, 0.3], dtype=np.float32)
    np.testing.assert_array_equal(chain.final_scores(candidates, scores, policy), scores)
    assert chain.rank_and_cut(candidates, chain.final_scores(candidates, scores, policy), 2)[0].tolist() == [2, 3]
    write_json(policy.to_dict(), tmp_path / "policy.json")
    _, read = chain.read_chain_parameters(tmp_path / "i2i.json", tmp_path / "policy.json")
    assert read == policy and isinstance(read.ranker_final, int)
