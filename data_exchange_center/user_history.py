"""The ranker's user history features: their names, and their values for one user's timeline.

The columns (their order in the model is the feature spec's):

- ``imp_<genre>``/``clk_<genre>``: impressions and clicks per genre among the previous ``PIT_WINDOW``
  impressions; ``hist_n``, ``hist_click_rate``, ``hist_mean_rating``: the whole history, smoothed
  (``schema``);
- recent windows: the smoothed click rate and mean rating of the previous W impressions, for each W
  of ``RECENT_WINDOWS``;
- genre affinities, one value per genre in [0, 1]: the smoothed click rate on the genre over the
  whole history (``lt_rate_*``) and over the previous ``PIT_WINDOW`` impressions (``rc_rate_*``), and
  the genre's share of the whole history (``lt_share_*``).

Offline, ranking computes them for millions of positions at once with prefix sums
(``offline/preprocess/pit_features.py``, ``offline/rank/user_history.py``). Online, a user whose live
events changed the timeline gets them from ``history_features`` below: the same formulas over one
timeline (the published seen items, labels and ratings with the events applied), in the same float
types, so a timeline gives the row that offline would give at its end (tested against the offline
tables, and checked on the published users by the offline == online check).
"""

from __future__ import annotations

import numpy as np

from data_exchange_center import schema as S
from data_exchange_center.feature_spec import FeatureSpec

RECENT_WINDOWS = (3, 10, 30, 100)  # impressions
AFFINITY_PRIOR_WEIGHT = 3.0  # pseudo-impressions at the user's overall click rate, per genre
RECENT_CLICK_RATE_PREFIX = "recent_click_rate_"
RECENT_MEAN_RATING_PREFIX = "recent_mean_rating_"
LONG_RATE_PREFIX = "lt_rate_"  # whole-history click rate on the genre
RECENT_RATE_PREFIX = "rc_rate_"  # click rate on the genre among the previous PIT_WINDOW impressions
LONG_SHARE_PREFIX = "lt_share_"  # the genre's share of the whole history
AFFINITY_PREFIXES = (LONG_RATE_PREFIX, RECENT_RATE_PREFIX, LONG_SHARE_PREFIX)


def window_columns() -> list[str]:
    return [RECENT_CLICK_RATE_PREFIX + str(w) for w in RECENT_WINDOWS] + [
        RECENT_MEAN_RATING_PREFIX + str(w) for w in RECENT_WINDOWS
    ]


def affinity_columns(genres: list[str], prefix: str) -> list[str]:
    return [prefix + S.genre_slug(g) for g in genres]


def all_affinity_columns(genres: list[str]) -> list[str]:
    return [c for prefix in AFFINITY_PREFIXES for c in affinity_columns(genres, prefix)]


def history_feature_columns(genres: list[str]) -> list[str]:
    """Every column ``history_features`` returns, in its order."""
    return S.pit_columns(genres) + list(S.HISTORY_COLUMNS) + window_columns() + all_affinity_columns(genres)


def history_features(labels: np.ndarray, ratings: np.ndarray, genre_flags: np.ndarray) -> np.ndarray:
    """The user history features of a hypothetical next impression after a timeline: (k,) float32 in
    ``history_feature_columns`` order.

    ``labels`` (n,) and ``ratings`` (n,) are the timeline's impressions in time order, ``genre_flags``
    (n, n_genres) 0/1 each impression's item genres (genre order).
    """
    labels = np.asarray(labels, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float64)
    flags = np.asarray(genre_flags, dtype=np.int64)  # (n, g)
    if flags.ndim != 2 or len(flags) != len(labels) or len(ratings) != len(labels):
        raise ValueError(f"labels {labels.shape}, ratings {ratings.shape} and genre flags {flags.shape} do not align")
    n, g = flags.shape
    clicks = flags * labels[:, None]  # (n, g)
    recent_imp, recent_clk = flags[-S.PIT_WINDOW :].sum(axis=0), clicks[-S.PIT_WINDOW :].sum(axis=0)  # (g,)
    weight = S.HISTORY_PRIOR_WEIGHT
    n_clicks, rating_sum = float(labels.sum()), float(ratings.sum())
    click_rate = np.float32((n_clicks + weight * S.PRIOR_CLICK_RATE) / (n + weight))
    mean_rating = np.float32((rating_sum + weight * S.PRIOR_MEAN_RATING) / (n + weight))
    windows = np.empty(2 * len(RECENT_WINDOWS), dtype=np.float32)
    for j, window in enumerate(RECENT_WINDOWS):
        w_n = float(min(n, window))
        w_clicks, w_ratings = float(labels[n - int(w_n) :].sum()), float(ratings[n - int(w_n) :].sum())
        windows[j] = (w_clicks + weight * S.PRIOR_CLICK_RATE) / (w_n + weight)
        windows[len(RECENT_WINDOWS) + j] = (w_ratings + weight * S.PRIOR_MEAN_RATING) / (w_n + weight)
    prior, affinity_weight = click_rate, np.float32(AFFINITY_PRIOR_WEIGHT)
    long_imp, long_clk = flags.sum(axis=0).astype(np.float32), clicks.sum(axis=0).astype(np.float32)
    affinities = np.concatenate([
        (long_clk + affinity_weight * prior) / (long_imp + affinity_weight),
        (recent_clk.astype(np.float32) + affinity_weight * prior) / (recent_imp.astype(np.float32) + affinity_weight),
        long_imp / np.maximum(np.float32(n), np.float32(1.0)),
    ])  # fmt: skip
    history = np.array([n, click_rate, mean_rating], dtype=np.float32)
    counts = np.concatenate([recent_imp, recent_clk]).astype(np.int16).astype(np.float32)
    out = np.concatenate([counts, history, windows, affinities.astype(np.float32)])
    assert len(out) == 2 * g + len(S.HISTORY_COLUMNS) + len(windows) + 3 * g
    return out


def table_rows(ids: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The rows of ``values`` (one per id of the sorted ``ids``) for ``wanted`` ids, zeros for an id
    without a row (an item unknown to the feature table has no genre)."""
    if not len(ids):
        return np.zeros((len(wanted), values.shape[1]), dtype=values.dtype)
    pos = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return np.where((ids[pos] == wanted)[:, None], values[pos], 0).astype(values.dtype, copy=False)


def encoded_history_row(
    spec: FeatureSpec, labels: np.ndarray, ratings: np.ndarray, seen_item_dense: np.ndarray
) -> np.ndarray | None:
    """The user's dense inputs (1, m) float32 for a timeline, encoded by ``spec``; ``seen_item_dense`` is
    the encoded item rows (dense part) of the timeline's items, whose genre flags give each impression's
    genres. None when the spec's user fields are not all history features (a spec this function does
    not cover: the caller keeps the feature store's row)."""
    item_fields = [f.name for f in spec.fields_of("item")[1]]
    flag_names = [S.genre_flag_column(g) for g in spec.genres]
    if not set(flag_names) <= set(item_fields):
        return None
    flags = np.asarray(seen_item_dense)[:, [item_fields.index(n) for n in flag_names]]  # (n, g)
    columns = history_feature_columns(spec.genres)
    values = dict(zip(columns, history_features(labels, ratings, flags).tolist(), strict=True))
    if any(f.name not in values for f in spec.fields_of("user")[1]):
        return None
    return spec.encode_dense_row("user", values)
