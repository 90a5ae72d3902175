"""Split and point-in-time features: exact counts, brute-force equality, no leakage, no skew."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tqdm

from data_exchange_center import schema as S
from offline.common.stage import DataError, silence_progress_bars
from offline.preprocess.pit_features import (
    item_genre_flags,
    list_genres,
    online_user_profiles,
    training_pit_features,
)
from offline.preprocess.split import split_by_time, summarize_split

pytestmark = pytest.mark.unit
GENRES = ["Action", "Comedy", "Drama"]


def make_ratings(n_per_user: dict[int, int], seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows = []
    for user, n in n_per_user.items():
        items = rng.choice(np.arange(100, 150), size=n, replace=False)
        ratings = rng.integers(1, 6, size=n)
        times = np.sort(rng.integers(0, 50, size=n))  # ties on purpose
        rows += [(user, i, float(r), t) for i, r, t in zip(items, ratings, times, strict=True)]
    ratings = pd.DataFrame(rows, columns=list(S.RATINGS_COLUMNS))
    ratings = ratings.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # file order shuffled across users
    items = pd.DataFrame(
        {
            S.ITEM_ID: np.arange(100, 150),
            S.TITLE: "t",
            S.GENRES: [[GENRES[i % 3]] if i % 4 else [GENRES[i % 3], GENRES[(i + 1) % 3]] for i in range(50)],
        }
    )
    return ratings, items


@pytest.mark.parametrize(
    ("n_ratings", "n_online", "n_train", "n_test"),
    [(20, 10, 8, 2), (21, 10, 9, 2), (25, 10, 12, 3), (15, 10, 4, 1), (11, 10, 1, 0), (10, 10, 0, 0)],
)
def test_split_counts_per_user(n_ratings: int, n_online: int, n_train: int, n_test: int) -> None:
    ratings, _ = make_ratings({1: n_ratings, 2: 30})
    samples = split_by_time(ratings)
    user = samples[samples[S.USER_ID] == 1][S.SPLIT].value_counts()
    assert (user.get(S.SPLIT_ONLINE, 0), user.get(S.SPLIT_TRAIN, 0), user.get(S.SPLIT_TEST, 0)) == (
        n_online,
        n_train,
        n_test,
    )


def test_split_is_time_ordered_with_ties_in_file_order() -> None:
    ratings = pd.DataFrame(
        {S.USER_ID: [7] * 12, S.ITEM_ID: np.arange(12)[::-1], S.RATING: 4.0, S.TIMESTAMP: [5, 5, 1] + [9] * 9}
    )
    samples = split_by_time(ratings, n_online=0)
    assert samples[S.ITEM_ID].tolist() == [9, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert samples[S.SEQ].tolist() == list(range(12))


def test_split_labels_and_summary() -> None:
    ratings, _ = make_ratings({1: 20, 2: 25, 3: 30})
    samples = split_by_time(ratings)
    assert (samples[S.LABEL] == (samples[S.RATING] > 3)).all()
    summary = summarize_split(samples)
    assert summary["n_online"] == 30
    assert summary["n_train"] + summary["n_test"] == 75 - 30
    assert summary["n_positive"] + summary["n_negative"] == 75


def test_empty_split_is_an_error() -> None:
    ratings, _ = make_ratings({1: 10, 2: 8})
    with pytest.raises(DataError, match="train split is empty"):
        split_by_time(ratings)


def brute_force_pit(samples: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """Loop over impressions: counts over the user's previous 10, strictly earlier."""
    genres_of = dict(zip(items[S.ITEM_ID], items[S.GENRES], strict=True))
    out = np.zeros((len(samples), 2 * len(GENRES)), dtype=np.int64)
    for _, rows in samples.groupby(S.USER_ID, sort=False):
        positions = rows.index.to_numpy()
        for j, pos in enumerate(positions):
            for prev in positions[max(0, j - S.PIT_WINDOW) : j]:
                for genre in genres_of[samples.at[prev, S.ITEM_ID]]:
                    g = GENRES.index(genre)
                    out[pos, g] += 1
                    out[pos, len(GENRES) + g] += int(samples.at[prev, S.LABEL])
    return out


def test_vectorized_pit_features_equal_brute_force() -> None:
    ratings, items = make_ratings({1: 25, 2: 40, 3: 12, 9: 33})
    samples = split_by_time(ratings)
    genres = list_genres(items)
    assert genres == GENRES
    features = training_pit_features(samples, item_genre_flags(items, genres), genres)
    np.testing.assert_array_equal(features[S.pit_columns(genres)].to_numpy(), brute_force_pit(samples, items))


def test_features_do_not_depend_on_the_impression_or_later_ones() -> None:
    ratings, items = make_ratings({1: 30, 2: 30})
    samples = split_by_time(ratings)
    genres = list_genres(items)
    flags = item_genre_flags(items, genres)
    before = training_pit_features(samples, flags, genres)
    changed = samples.copy()
    cut = 17  # change the label and rating of row 17 and everything after it
    changed.loc[cut:, S.RATING] = 6.0 - changed.loc[cut:, S.RATING]
    changed.loc[cut:, S.LABEL] = 1 - changed.loc[cut:, S.LABEL]
    after = training_pit_features(changed, flags, genres)
    same_user_before = samples.index[(samples.index <= cut) & (samples[S.USER_ID] == samples.at[cut, S.USER_ID])]
    pd.testing.assert_frame_equal(before.loc[same_user_before], after.loc[same_user_before])


def test_online_profile_equals_training_feature_of_a_next_impression() -> None:
    ratings, items = make_ratings({1: 30, 2: 22, 3: 41})
    samples = split_by_time(ratings)
    genres = list_genres(items)
    flags = item_genre_flags(items, genres)
    profiles = online_user_profiles(samples, flags, genres).set_index(S.USER_ID)
    for user, rows in samples.groupby(S.USER_ID):
        offline = rows[rows[S.SPLIT] != S.SPLIT_ONLINE]
        hypothetical = offline.iloc[[-1]].assign(**{S.SEQ: len(offline)})
        timeline = pd.concat([offline, hypothetical], ignore_index=True)
        expected = training_pit_features(timeline, flags, genres).iloc[-1]
        got = profiles.loc[user, expected.index]
        np.testing.assert_allclose(got.to_numpy(np.float64), expected.to_numpy(np.float64), rtol=1e-6)
        clicks = expected[[S.click_column(g) for g in genres]].to_numpy()
        assert profiles.loc[user, S.TERMS] == [g for g, c in zip(genres, clicks, strict=True) if c >= S.TERM_MIN_CLICKS]


def test_history_stats_are_point_in_time() -> None:
    ratings = pd.DataFrame(
        {S.USER_ID: 1, S.ITEM_ID: [100, 101, 102], S.RATING: [5.0, 1.0, 4.0], S.TIMESTAMP: [1, 2, 3]}
    )
    items = pd.DataFrame({S.ITEM_ID: [100, 101, 102], S.TITLE: "t", S.GENRES: [["Action"]] * 3})
    samples = split_by_time(ratings, n_online=0, train_fraction=0.5)
    features = training_pit_features(samples, item_genre_flags(items, ["Action"]), ["Action"])
    w, prior_rate, prior_rating = S.HISTORY_PRIOR_WEIGHT, S.PRIOR_CLICK_RATE, S.PRIOR_MEAN_RATING
    assert features[S.HIST_N].tolist() == [0, 1, 2]
    assert features[S.HIST_CLICK_RATE].iloc[2] == pytest.approx((1 + w * prior_rate) / (2 + w))
    assert features[S.HIST_MEAN_RATING].iloc[1] == pytest.approx((5 + w * prior_rating) / (1 + w))


def test_atomic_write_leaves_previous_file_on_failure(tmp_path: Path) -> None:
    from data_exchange_center.artifacts import atomic_path, write_parquet

    target = tmp_path / "a.parquet"
    write_parquet(pd.DataFrame({"x": [1, 2]}), target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert pd.read_parquet(target)["x"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["a.parquet"]


def test_quiet_silences_every_progress_bar_even_one_that_passes_disable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tqdm.tqdm, "__init__", tqdm.tqdm.__init__)  # restored after the test
    shown = io.StringIO()
    list(tqdm.tqdm(range(3), file=shown, disable=False))
    assert shown.getvalue()
    silence_progress_bars()
    silence_progress_bars()  # idempotent: stage functions called twice in one process
    quiet = io.StringIO()
    list(tqdm.tqdm(range(3), file=quiet, disable=False))
    assert quiet.getvalue() == ""
