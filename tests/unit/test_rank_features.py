"""Ranking features: spec layout and golden values, train-only statistics, point-in-time history
features against a brute-force loop, serving rows equal to a next impression, refusal of bad inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import DenseField, FeatureSpec
from data_exchange_center.user_history import (
    RECENT_WINDOWS,
    all_affinity_columns,
    encoded_history_row,
    history_feature_columns,
    history_features,
    table_rows,
    window_columns,
)
from offline.preprocess.pit_features import item_genre_flags, online_user_profiles, training_pit_features
from offline.preprocess.split import split_by_time
from offline.rank.features import (
    RankingTables,
    build_impression_rows,
    build_item_features,
    build_ranking_tables,
    sample_item_rows,
)
from offline.rank.user_history import UserHistory

pytestmark = pytest.mark.unit

ITEMS = pd.DataFrame(
    {
        S.ITEM_ID: [10, 20, 30, 40, 50],
        S.TITLE: "t",
        S.GENRES: [["Action"], ["Comedy"], ["Action", "Drama"], ["Drama"], ["Comedy"]],
    }
)
USERS = pd.DataFrame({S.USER_ID: [1, 2], S.GENDER: ["F", "M"], S.AGE: [25, 35], S.OCCUPATION: [3, 7]})
# (user, item, rating, time). With 1 online impression and half of the rest in train, per user:
# seq 0-1 train, 2-3 test, 4 online.  User 1 labels: 1 0 | 1 0 | 0;  user 2: 1 1 | 0 1 | 1.
RATINGS = pd.DataFrame(
    [(1, 10, 5, 1), (1, 20, 2, 2), (1, 30, 4, 3), (1, 40, 1, 4), (1, 50, 3, 5)]
    + [(2, 20, 4, 1), (2, 30, 5, 2), (2, 10, 1, 3), (2, 50, 4, 4), (2, 40, 5, 5)],
    columns=list(S.RATINGS_COLUMNS),
).astype({S.RATING: np.float32})


def preprocess(
    ratings: pd.DataFrame, items: pd.DataFrame = ITEMS, n_online: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """samples, pit_features and user_profiles, as the preprocess stages write them."""
    samples = split_by_time(ratings, n_online=n_online, train_fraction=0.5)
    genres = sorted({g for gs in items[S.GENRES] for g in gs})
    flags = item_genre_flags(items, genres)
    return samples, training_pit_features(samples, flags, genres), online_user_profiles(samples, flags, genres)


def build(ratings: pd.DataFrame = RATINGS, users: pd.DataFrame = USERS, items: pd.DataFrame = ITEMS) -> RankingTables:
    samples, pit, profiles = preprocess(ratings, items)
    return build_ranking_tables(samples, pit, profiles, users, items, dataset="tiny")


def random_ratings(
    n_users: int = 4, n_per_user: int = 40, seed: int = 0, n_items: int = 60
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Sci-Fi"]
    items = pd.DataFrame(
        {
            S.ITEM_ID: 100 + 3 * np.arange(n_items),  # sparse ids
            S.TITLE: "t",
            S.GENRES: [list(rng.choice(genres, size=rng.integers(1, 3), replace=False)) for _ in range(n_items)],
        }
    )
    rows = [
        (7 + 5 * u, int(item), float(rng.integers(1, 6)), int(t))
        for u in range(n_users)
        for item, t in zip(
            rng.choice(items[S.ITEM_ID], n_per_user, replace=False),
            np.sort(rng.integers(0, 99, n_per_user)),
            strict=True,
        )
    ]
    return pd.DataFrame(rows, columns=list(S.RATINGS_COLUMNS)), items


# --- the specification -------------------------------------------------------------------------
def test_spec_layout_vocabularies_and_statistics_golden() -> None:
    spec = build().spec
    genres = ["Action", "Comedy", "Drama"]
    assert spec.genres == genres
    assert spec.columns[:5] == [S.USER_ID, S.GENDER, S.AGE, S.OCCUPATION, S.ITEM_ID]
    assert [f.source for f in spec.categorical] == ["user"] * 4 + ["item"]
    assert spec.columns[5:11] == ["imp_action", "imp_comedy", "imp_drama", "clk_action", "clk_comedy", "clk_drama"]
    assert spec.row_columns[-3:] == ["genre_action", "genre_comedy", "genre_drama"]
    assert spec.columns[-len(chain.EVIDENCE_FIELDS) :] == list(chain.EVIDENCE_FIELDS)  # the evidence ends the inputs
    assert spec.n_evidence == len(chain.EVIDENCE_FIELDS)
    assert spec.n_features == 5 + 6 + 3 + 2 * len(RECENT_WINDOWS) + 3 * 3 + 3 + len(chain.EVIDENCE_FIELDS)
    vocab = {f.name: f.vocab for f in spec.categorical}
    assert vocab == {
        S.USER_ID: [1, 2],
        S.GENDER: ["F", "M"],
        S.AGE: [25, 35],
        S.OCCUPATION: [3, 7],
        S.ITEM_ID: [10, 20, 30],
    }  # fmt: skip  (items 40 and 50 appear only after train)
    dense = {f.name: f for f in spec.dense}
    assert (dense[S.HIST_N].mean, dense[S.HIST_N].std) == pytest.approx((0.5, 0.5))  # train hist_n: 0 1 0 1
    # train imp_comedy: user 1 seq 1 sees item 10 before (0); user 2 seq 1 sees item 20 (comedy) before (1)
    assert (dense["imp_comedy"].mean, dense["imp_comedy"].std) == pytest.approx((0.25, np.sqrt(0.1875)))
    assert not dense["genre_drama"].normalize and not dense["lt_rate_action"].normalize
    assert dense["imp_action"].normalize and dense["recent_click_rate_3"].normalize


def test_spec_round_trips_through_json(tmp_path) -> None:
    spec = build().spec
    assert FeatureSpec.load(spec.save(tmp_path / "spec.json")) == spec


def test_unknown_ids_encode_to_zero() -> None:
    tables = build()
    spec = tables.spec
    strangers = tables.user_features.head(1).assign(**{S.USER_ID: 99, S.GENDER: "X", S.AGE: 99, S.OCCUPATION: 0})
    sparse, _ = spec.encode_users(strangers)
    assert sparse.tolist() == [[0, 0, 0, 0]]
    items = tables.item_features.set_index(S.ITEM_ID).loc[[30, 40, 50]].reset_index()
    item_sparse, item_dense = spec.encode_items(items)
    assert item_sparse[:, 0].tolist() == [3, 0, 0]  # 40 and 50 were never in the train split
    assert item_dense.tolist() == [[1, 0, 1], [0, 0, 1], [0, 1, 0]]


def test_spec_uses_the_train_split_only() -> None:
    before = build()
    ratings = RATINGS.copy()
    later = ratings[S.ITEM_ID].isin([40, 50]) | (ratings[S.TIMESTAMP] >= 3)  # test and online impressions
    ratings.loc[later, S.RATING] = 6.0 - ratings.loc[later, S.RATING]  # flip likes of later impressions
    after = build(ratings)
    assert after.spec == before.spec
    assert not after.test.equals(before.test)  # the test rows did change


def test_csv_datasets_have_no_demographic_fields() -> None:
    tables = build(users=USERS[[S.USER_ID]])
    assert [f.name for f in tables.spec.categorical] == [S.USER_ID, S.ITEM_ID]
    assert not {S.GENDER, S.AGE, S.OCCUPATION} & set(tables.train.columns)


# --- history features --------------------------------------------------------------------------
def test_serving_row_golden_values() -> None:
    user = build().user_features.set_index(S.USER_ID).loc[1]
    # user 1 before its online impression: (10, 5, like) (20, 2) (30, 4, like) (40, 1)
    assert user["recent_click_rate_3"] == pytest.approx((1 + 2.5) / (3 + 5))
    assert user["recent_mean_rating_3"] == pytest.approx((2 + 4 + 1 + 17.5) / (3 + 5))
    assert user[S.HIST_CLICK_RATE] == pytest.approx(0.5)
    assert user["lt_rate_action"] == pytest.approx((2 + 3 * 0.5) / (2 + 3))  # 10 and 30, both liked
    assert user["lt_rate_comedy"] == pytest.approx((0 + 1.5) / (1 + 3))
    assert user["lt_share_drama"] == pytest.approx(2 / 4)
    assert user["rc_rate_drama"] == pytest.approx((1 + 1.5) / (2 + 3))
    assert user[S.GENDER] == "F"


def brute_force_history(samples: pd.DataFrame, flags: pd.DataFrame, row: int) -> dict[str, float]:
    """The history features of impression ``row``, by a plain loop over the user's earlier rows."""
    user = samples[S.USER_ID].iat[row]
    earlier = [r for r in range(row) if samples[S.USER_ID].iat[r] == user]
    labels = [int(samples[S.LABEL].iat[r]) for r in earlier]
    ratings = [float(samples[S.RATING].iat[r]) for r in earlier]
    out = {}
    for w in RECENT_WINDOWS:
        lab, rat = labels[-w:], ratings[-w:]
        out[f"recent_click_rate_{w}"] = (sum(lab) + 2.5) / (len(lab) + 5)
        out[f"recent_mean_rating_{w}"] = (sum(rat) + 17.5) / (len(rat) + 5)
    prior = (sum(labels) + 2.5) / (len(labels) + 5)
    for genre in flags.columns:
        slug = genre.removeprefix(S.GENRE_FLAG_PREFIX)
        has = [int(flags.loc[samples[S.ITEM_ID].iat[r], genre]) for r in earlier]
        imp, clk = sum(has), sum(h * lab for h, lab in zip(has, labels, strict=True))
        recent_imp = sum(has[-S.PIT_WINDOW :])
        recent_clk = sum(h * lab for h, lab in zip(has[-S.PIT_WINDOW :], labels[-S.PIT_WINDOW :], strict=True))
        out[f"lt_rate_{slug}"] = (clk + 3 * prior) / (imp + 3)
        out[f"rc_rate_{slug}"] = (recent_clk + 3 * prior) / (recent_imp + 3)
        out[f"lt_share_{slug}"] = imp / max(len(earlier), 1)
    return out


def test_history_features_equal_a_brute_force_loop() -> None:
    ratings, items = random_ratings()
    samples, pit, profiles = preprocess(ratings, items, n_online=5)
    tables = build_ranking_tables(samples, pit, profiles, USERS.iloc[:0][[S.USER_ID]], items, "random")
    flags = build_item_features(items, tables.spec.genres).set_index(S.ITEM_ID)
    train_rows = np.flatnonzero((samples[S.SPLIT] == S.SPLIT_TRAIN).to_numpy())
    columns = window_columns() + all_affinity_columns(tables.spec.genres)
    for k in [0, 1, 2, 11, 29, 30, 57, len(train_rows) - 1]:
        expected = brute_force_history(samples, flags, train_rows[k])
        actual = tables.train.iloc[k]
        assert actual[S.SEQ] == samples[S.SEQ].iat[train_rows[k]]
        for column in columns:
            assert actual[column] == pytest.approx(expected[column], rel=1e-5), column


def test_features_do_not_depend_on_the_impression_or_later_ones() -> None:
    ratings, items = random_ratings(seed=1)
    samples, pit, profiles = preprocess(ratings, items, n_online=5)
    base = build_ranking_tables(samples, pit, profiles, USERS.iloc[:0][[S.USER_ID]], items, "random").train
    row = 10  # the first user's 11th impression (train); change its rating and every later one of that user
    changed = ratings.copy()
    first_user = samples[S.USER_ID].iat[0]
    later_items = samples.loc[(samples[S.USER_ID] == first_user) & (samples[S.SEQ] >= row), S.ITEM_ID]
    mask = (changed[S.USER_ID] == first_user) & changed[S.ITEM_ID].isin(later_items)
    changed.loc[mask, S.RATING] = 6.0 - changed.loc[mask, S.RATING]
    samples2, pit2, profiles2 = preprocess(changed, items, n_online=5)
    after = build_ranking_tables(samples2, pit2, profiles2, USERS.iloc[:0][[S.USER_ID]], items, "random").train
    feature_columns = [c for c in base.columns if c not in (S.LABEL,)]
    same_user = base[S.USER_ID] == first_user
    unchanged = ~same_user | (base[S.SEQ] <= row)
    pd.testing.assert_frame_equal(base.loc[unchanged, feature_columns], after.loc[unchanged, feature_columns])
    assert not base.loc[~unchanged, feature_columns].equals(after.loc[~unchanged, feature_columns])


def test_serving_features_equal_those_of_the_next_impression() -> None:
    """With one online impression per user, the serving row is the features of that impression."""
    ratings, items = random_ratings(seed=2)
    samples, pit, profiles = preprocess(ratings, items, n_online=1)
    tables = build_ranking_tables(samples, pit, profiles, USERS.iloc[:0][[S.USER_ID]], items, "random")
    item_features = build_item_features(items, tables.spec.genres)
    item_rows = sample_item_rows(samples, item_features)
    history = UserHistory.from_samples(samples, item_features.drop(columns=S.ITEM_ID).to_numpy()[item_rows])
    no_demographics = USERS.iloc[:0][[S.USER_ID]]
    online = build_impression_rows(
        samples, pit, history, no_demographics, item_features, item_rows, tables.spec.genres, S.SPLIT_ONLINE
    )
    user_columns = tables.spec.source_columns("user")
    expected = online[user_columns].set_index(S.USER_ID).sort_index()
    actual = tables.user_features[user_columns].set_index(S.USER_ID).sort_index()
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False)


def test_one_timeline_gives_the_offline_rows_bit_for_bit() -> None:
    """``user_history.history_features`` (what the service computes for a user with live events) over the
    impressions before a position equals the offline table's row at that position, for every train row
    and every serving row; encoded, it equals the spec's encoding of that row."""
    ratings, items = random_ratings(n_users=3, n_per_user=160, seed=3, n_items=200)  # past the 100-long window
    samples, pit, profiles = preprocess(ratings, items, n_online=5)
    tables = build_ranking_tables(samples, pit, profiles, USERS.iloc[:0][[S.USER_ID]], items, "random")
    genres = tables.spec.genres
    flags = build_item_features(items, genres).set_index(S.ITEM_ID).loc[:, [S.genre_flag_column(g) for g in genres]]
    columns = history_feature_columns(genres)
    user_dense = [f.name for f in tables.spec.fields_of("user")[1]]
    assert sorted(user_dense) == sorted(columns)  # the function covers every user dense field

    def timeline(user: int, before_seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = samples[(samples[S.USER_ID] == user) & (samples[S.SEQ] < before_seq)]
        return rows[S.LABEL].to_numpy(), rows[S.RATING].to_numpy(), flags.loc[rows[S.ITEM_ID]].to_numpy()

    for _, row in tables.train.iterrows():
        actual = history_features(*timeline(int(row[S.USER_ID]), int(row[S.SEQ])))
        np.testing.assert_array_equal(actual, row[columns].to_numpy(np.float32), err_msg=f"seq {row[S.SEQ]}")
    offline_end = samples[samples[S.SPLIT] != S.SPLIT_ONLINE].groupby(S.USER_ID)[S.SEQ].max() + 1
    encoded_table = tables.spec.encode_users(tables.user_features)[1]
    for position, (_, row) in enumerate(tables.user_features.iterrows()):
        labels, user_ratings, user_flags = timeline(int(row[S.USER_ID]), int(offline_end[row[S.USER_ID]]))
        np.testing.assert_array_equal(history_features(labels, user_ratings, user_flags),
                                      row[columns].to_numpy(np.float32))  # fmt: skip
        item_dense = np.zeros((len(labels), len(genres) + 2), np.float32)
        item_dense[:, 1:-1] = user_flags  # the genre flags are found by name among the item fields
        spec = dataclasses.replace(tables.spec, dense=[
            *tables.spec.fields_of("user")[1], DenseField("other", "item", normalize=False),
            *tables.spec.fields_of("item")[1], DenseField("other2", "item", normalize=False),
        ])  # fmt: skip
        encoded = encoded_history_row(spec, labels, user_ratings, item_dense)
        assert encoded is not None
        np.testing.assert_array_equal(encoded[0], encoded_table[position])


def test_table_rows_look_up_sorted_ids_with_zeros_for_unknown_ones() -> None:
    values = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    rows = table_rows(np.array([10, 20, 30]), values, np.array([30, 5, 20, 99]))
    np.testing.assert_array_equal(rows, [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert rows.dtype == np.float32 and table_rows(np.zeros(0, np.int64), values[:0], np.array([1])).shape == (1, 2)


def test_a_spec_with_user_fields_that_are_not_history_features_is_not_covered() -> None:
    tables = build()
    extra = dataclasses.replace(tables.spec, dense=[DenseField("age_days", "user"), *tables.spec.dense])
    n_item_dense = len(tables.spec.fields_of("item")[1])
    flags = np.zeros((2, n_item_dense), np.float32)
    assert encoded_history_row(extra, np.array([1, 0]), np.array([5.0, 2.0]), flags) is None
    assert encoded_history_row(tables.spec, np.array([1, 0]), np.array([5.0, 2.0]), flags) is not None


# --- bad inputs --------------------------------------------------------------------------------
def test_refuses_inputs_that_do_not_fit_together() -> None:
    samples, pit, profiles = preprocess(RATINGS)
    with pytest.raises(ArtifactError, match="row-aligned"):
        build_ranking_tables(samples, pit.iloc[:-1], profiles, USERS, ITEMS, "tiny")
    with pytest.raises(ArtifactError, match="missing from items.parquet"):
        build_ranking_tables(samples, pit, profiles, USERS, ITEMS[ITEMS[S.ITEM_ID] != 30], "tiny")
    with pytest.raises(ArtifactError, match="lacks"):
        build_ranking_tables(samples, pit.drop(columns=["clk_drama"]), profiles, USERS, ITEMS, "tiny")
    with pytest.raises(ArtifactError, match="do not match"):
        build_ranking_tables(samples, pit.assign(**{S.HIST_N: pit[S.HIST_N] + 1}), profiles, USERS, ITEMS, "tiny")
    with pytest.raises(ArtifactError, match="missing from users.parquet"):
        build_ranking_tables(samples, pit, profiles, USERS.iloc[:1], ITEMS, "tiny")
    with pytest.raises(ArtifactError, match="duplicate"):
        build_ranking_tables(samples, pit, profiles, pd.concat([USERS, USERS]), ITEMS, "tiny")


def test_the_importance_groups_cover_every_ranker_input_once() -> None:
    from offline.evaluate.validation import input_groups

    spec = build().spec
    groups = input_groups(spec)
    sparse = sorted(j for cols in groups.values() for j in cols[0])
    dense = sorted(j for cols in groups.values() for j in cols[1])
    assert sparse == list(range(len(spec.categorical))) and dense == list(range(len(spec.dense)))
    assert {"user_id", "item_id", "evidence_i2i", "evidence_vector", "evidence_channel"} <= set(groups)
    evidence = [spec.dense[j].name for j in groups["evidence_vector"][1]]
    assert evidence == [n for n in chain.EVIDENCE_FIELDS if n.startswith("ev_vector")]
