"""Large data in bounded memory: Parquet written and read by blocks, stages that process blocks of whole
users (their artifacts equal the one-block run's), and the stable user samples of the evaluations and
of the ranker's training rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, parquet_chunks, read_parquet_blocks, write_parquet
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import evaluation_sample, hash_order
from offline.common.user_states import user_blocks
from offline.preprocess.fetch import fetch_dataset
from offline.preprocess.s1_data_split import data_split
from offline.preprocess.s2_term_trans import term_trans_pandas
from offline.preprocess.synthetic import SyntheticConfig
from offline.rank.candidates import is_fit_user
from offline.rank.s1_feature_engi import feature_engi
from offline.rank.s2_model_train import read_rows, training_users
from offline.recall.s2_vector_recall import training_examples

pytestmark = pytest.mark.unit

FRAME = pd.DataFrame(
    {
        "a": np.arange(10_000, dtype=np.int16),
        "b": np.linspace(0, 1, 10_000, dtype=np.float32),
        "c": pd.Categorical(["x", "y"] * 5_000),
    }
)


def test_parquet_chunks_equal_one_write(tmp_path: Path) -> None:
    write_parquet(FRAME, tmp_path / "one.parquet")
    with parquet_chunks(tmp_path / "blocks.parquet") as write:
        for lo in range(0, len(FRAME), 3_000):
            write(FRAME.iloc[lo : lo + 3_000])
    one, blocks = tmp_path / "one.parquet", tmp_path / "blocks.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(blocks), pd.read_parquet(one))
    assert pq.read_schema(blocks).equals(pq.read_schema(one), check_metadata=True)


def test_parquet_chunks_keep_the_previous_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_parquet(FRAME.head(5), path)
    with pytest.raises(RuntimeError), parquet_chunks(path) as write:
        write(FRAME)
        raise RuntimeError("the stage failed half-way")
    pd.testing.assert_frame_equal(pd.read_parquet(path), FRAME.head(5))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temporary file left
    with pytest.raises(ValueError, match="no rows"), parquet_chunks(path):
        pass


def test_read_parquet_blocks(tmp_path: Path) -> None:
    path = write_parquet(FRAME, tmp_path / "t.parquet")
    sizes = [0, 7_000, 1, 2_999]  # across the reader's batches
    blocks = list(read_parquet_blocks(path, sizes, ["b", "a"]))
    assert [len(b) for b in blocks] == sizes
    assert list(blocks[1].columns) == ["b", "a"] and blocks[1]["a"].dtype == np.int16
    pd.testing.assert_frame_equal(pd.concat(blocks, ignore_index=True), FRAME[["b", "a"]])
    with pytest.raises(ArtifactError, match="fewer rows"):
        list(read_parquet_blocks(path, [10_001]))
    with pytest.raises(ArtifactError, match="missing artifact"):
        list(read_parquet_blocks(tmp_path / "absent.parquet", [1]))


@pytest.mark.parametrize(
    ("users", "max_rows", "expected"),
    [
        ([1, 1, 1, 2, 2, 3, 4, 4, 4, 4, 5], 4, [(0, 3), (3, 6), (6, 10), (10, 11)]),
        ([1, 1, 1, 1, 1, 1], 4, [(0, 6)]),  # a user larger than a block gets one alone
        ([1, 2, 3], 10, [(0, 3)]),
        ([], 4, [(0, 0)]),
    ],
)
def test_user_blocks(users: list[int], max_rows: int, expected: list[tuple[int, int]]) -> None:
    assert [(b.start, b.stop) for b in user_blocks(np.array(users, dtype=np.int64), max_rows)] == expected


def test_stages_in_blocks_write_the_one_block_artifacts(tmp_path: Path) -> None:
    runs = {}
    for name, block_rows in (("one", 10**9), ("blocks", 1_500)):
        paths = ArtifactPaths(tmp_path / name)
        fetch_dataset("synthetic", paths, synthetic=SyntheticConfig(n_users=120, n_items=80, n_ratings=8_000))
        data_split(paths)
        term_trans_pandas(paths, block_rows=block_rows)
        feature_engi(paths, block_rows=block_rows)
        runs[name] = paths
    one, blocks = runs["one"], runs["blocks"]
    assert json.loads(blocks.feature_spec_path.read_text()) == json.loads(one.feature_spec_path.read_text())
    assert len(user_blocks(pd.read_parquet(one.samples_path)[S.USER_ID].to_numpy(), 1_500)) >= 5
    for path in ("pit_features_path", "user_profiles_path", "rank_train_path", "rank_test_path", "user_features_path"):
        pd.testing.assert_frame_equal(pd.read_parquet(getattr(blocks, path)), pd.read_parquet(getattr(one, path)))


def test_evaluation_sample_is_stable_and_independent_of_the_watch_halves() -> None:
    users = np.arange(1, 50_001, dtype=np.int64)
    assert evaluation_sample(users[:5_000], 10_000).all()
    keep = evaluation_sample(users, 10_000)
    assert keep.sum() == 10_000
    shuffled = np.random.default_rng(0).permutation(users)
    assert set(shuffled[evaluation_sample(shuffled, 10_000)].tolist()) == set(users[keep].tolist())
    assert 0.45 < is_fit_user(users[keep]).mean() < 0.55  # both halves of the validation users stay
    assert 0.4 < (users[keep] <= 25_000).mean() < 0.6  # not the smallest ids
    assert sorted(hash_order(users[:100]).tolist()) == list(range(100))


def test_training_users_are_whole_users_within_the_row_budget(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    user_ids = np.repeat(np.arange(200), rng.integers(1, 30, 200))
    path = write_parquet(pd.DataFrame({S.USER_ID: user_ids}), tmp_path / "train.parquet")
    assert training_users(path, len(user_ids)) is None
    chosen = training_users(path, 1_000)
    assert chosen is not None and np.all(np.diff(chosen) > 0)
    n_rows = int(np.isin(user_ids, chosen).sum())
    next_user = np.setdiff1d(np.unique(user_ids), chosen)[0]
    assert n_rows <= 1_000 and n_rows > 1_000 - 30 and next_user not in chosen


def test_read_rows_of_chosen_users_keeps_the_table_and_the_file_order(tmp_path: Path) -> None:
    table = pd.DataFrame({S.USER_ID: [3, 1, 3, 2, 1], S.ITEM_ID: [10, 11, 12, 13, 14], "x": np.arange(5.0)})
    path = write_parquet(table, tmp_path / "train.parquet")
    columns = (S.USER_ID, S.ITEM_ID, S.USER_ID)  # the user id is also a feature column: named twice
    pd.testing.assert_frame_equal(read_rows(path, columns), table)
    chosen = read_rows(path, columns, np.array([1, 3]))
    pd.testing.assert_frame_equal(chosen, table.iloc[[0, 1, 2, 4]].reset_index(drop=True))


def test_vector_training_examples_respect_the_sample_budget() -> None:
    rows = pd.DataFrame({S.USER_ID: np.repeat([1, 2, 3], 40), S.ITEM_ID: np.tile(np.arange(1, 41), 3), S.LABEL: 1})
    vocab = np.arange(1, 41)
    full = training_examples(rows, vocab, window=5)
    assert len(full.targets) == 120
    sampled = training_examples(rows, vocab, window=5, max_examples=30, seed=3)
    assert len(sampled.targets) == 30
    positions = [int(np.flatnonzero((full.targets == t) & (full.recent_items == r).all(axis=1))[0])
                 for t, r in zip(sampled.targets, sampled.recent_items, strict=True)]  # fmt: skip
    assert len(positions) == 30  # every sampled example is one of the full set, with its own history
