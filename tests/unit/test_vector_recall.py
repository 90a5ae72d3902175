"""The vector model's inputs and export, and the recency-weighted item-to-item selection (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from data_exchange_center import chain
from data_exchange_center.feature_spec import encode_recent_items
from offline.recall.item_to_item import gram_matrix, spd_inverse
from offline.recall.next_item import NextItemModel, export_user_tower, history_windows, onnx_user_vectors
from offline.recall.s3_item_to_item import i2i_scores_per_policy, trigger_grid

pytestmark = pytest.mark.unit


def test_encode_recent_items_golden_values() -> None:
    vocab = np.array([10, 20, 30, 40])
    items, liked = encode_recent_items(np.array([40, 99, 10, 20]), np.array([1, 1, 0, 1]), vocab, window=3)
    assert items.tolist() == [[0, 1, 2]]  # 99 is unknown -> 0; 10 -> 1; 20 -> 2 (oldest first)
    assert liked.tolist() == [[1.0, 0.0, 1.0]]
    items, liked = encode_recent_items(np.array([30]), np.array([1]), vocab, window=3)
    assert items.tolist() == [[0, 0, 3]] and liked.tolist() == [[0.0, 0.0, 1.0]]
    assert encode_recent_items(np.zeros(0, np.int64), np.zeros(0), vocab, 2)[0].tolist() == [[0, 0]]


def test_history_windows_equal_brute_force() -> None:
    rng = np.random.default_rng(1)
    users = np.sort(rng.integers(0, 5, size=60))
    item_index = rng.integers(1, 9, size=60)
    liked = rng.integers(0, 2, size=60)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    items, flags = history_windows(item_index, liked, first, np.arange(60), window=4)
    for r in range(60):
        before = [p for p in range(first[r], r)][-4:]
        assert items[r].tolist() == [0] * (4 - len(before)) + item_index[before].tolist()
        assert flags[r].tolist() == [0.0] * (4 - len(before)) + liked[before].astype(float).tolist()


def test_history_windows_match_the_serving_encoding() -> None:
    vocab = np.array([3, 5, 8, 13])
    seen, labels = np.array([5, 8, 3, 13, 8]), np.array([1, 0, 1, 1, 0])
    item_index = np.searchsorted(vocab, seen) + 1
    offline = history_windows(item_index, labels, np.zeros(1, np.int64), np.array([len(seen)]), 4)
    online = encode_recent_items(np.r_[seen, 0][:-1], labels, vocab, 4)
    assert offline[0].tolist() == online[0].tolist() and offline[1].tolist() == online[1].tolist()


def test_user_tower_onnx_equals_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    genres = np.random.default_rng(0).integers(0, 2, size=(7, 3)).astype(np.float32)  # row 0 = padding
    model = NextItemModel(n_items=6, item_genres=genres, dim=8, window=5, hidden=16).eval()
    onnx_path = export_user_tower(model, 5, tmp_path / "user_tower.onnx")
    vocab = np.array([11, 12, 13, 14, 15, 16])
    seen = [np.array([11, 14, 16]), np.zeros(0, np.int64), np.array([12, 13, 14, 15, 16, 11, 12])]
    labels = [np.array([1, 0, 1]), np.zeros(0), np.array([0, 1, 1, 0, 1, 1, 0])]
    vectors = onnx_user_vectors(onnx_path, seen, labels, vocab, 5)
    encoded = [encode_recent_items(s, lab, vocab, 5) for s, lab in zip(seen, labels, strict=True)]
    with torch.no_grad():
        expected = model.user_vectors(torch.from_numpy(np.concatenate([e[0] for e in encoded])),
                                      torch.from_numpy(np.concatenate([e[1] for e in encoded]))).numpy()  # fmt: skip
    assert vectors.shape == (3, 9)
    np.testing.assert_allclose(vectors[:, :-1], expected, atol=1e-5)
    assert (vectors[:, -1] == 1.0).all()
    assert not np.allclose(vectors[0], vectors[2])  # the history changes the vector


def test_i2i_scores_per_policy_equal_the_serving_scores() -> None:
    rng = np.random.default_rng(2)
    item_ids = np.arange(100, 140)
    nbr_items = rng.choice(item_ids, size=(40, 6))
    nbr_items[::5, 4:] = -1
    nbr_weights = rng.random((40, 6)).astype(np.float32)
    seen = rng.choice(np.r_[item_ids, 999], size=260)  # 999 is unknown to the index
    labels = rng.integers(0, 2, size=260).astype(np.int8)
    grid = trigger_grid()
    got = i2i_scores_per_policy(item_ids, nbr_items, nbr_weights, seen, labels, grid)

    class Index:
        def neighbors_of(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pos = np.minimum(np.searchsorted(item_ids, items), len(item_ids) - 1)
            known = item_ids[pos] == items
            return np.where(known[:, None], nbr_items[pos], -1), np.where(known[:, None], nbr_weights[pos], 0.0)

    user = chain.UserState([], None, seen, labels)
    for policy, (items, scores) in zip(grid, got, strict=True):
        _, (want_items, want_scores) = chain.recall_channels(Index(), user, {}, policy)  # type: ignore[arg-type]
        assert items.tolist() == want_items.tolist()
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


def test_spd_inverse_in_place_equals_the_general_inverse() -> None:
    rng = np.random.default_rng(0)
    for m in (1, 5, 2_049, 2_500):  # across the mirroring bands
        x = rng.random((2 * m, m))
        gram = x.T @ x + 5.0 * np.eye(m)
        expected = np.linalg.inv(gram)
        actual = spd_inverse(gram)
        assert actual is gram  # in place: no second (m, m) matrix
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
        assert np.array_equal(actual, actual.T)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        spd_inverse(-np.eye(3))
    with pytest.raises(ValueError, match="C-ordered"):
        spd_inverse(np.asfortranarray(np.eye(3) + 0.1))


def test_gram_matrix_by_column_blocks_equals_the_sparse_product() -> None:
    x = sp.random(300, 70, density=0.1, format="csr", random_state=1)
    expected = (x.T @ x).toarray()
    for block in (1, 16, 70, 2048):
        actual = gram_matrix(x, block)
        assert actual.flags.c_contiguous and np.array_equal(actual, expected)
