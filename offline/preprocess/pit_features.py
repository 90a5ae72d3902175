"""Point-in-time genre counts: one function for training rows and for the online user profile.

For an impression at position ``p`` of a user's timeline, the window is that user's previous
``PIT_WINDOW`` impressions, strictly before ``p``. Per genre we count impressions and clicks
(label 1) in the window. The online profile is the same function evaluated at the position just
after the user's last offline impression, so serving sees exactly what training saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_exchange_center import schema as S


def list_genres(items: pd.DataFrame) -> list[str]:
    """All genres of the catalogue, sorted: the order of every genre column downstream."""
    return sorted({g for genres in items[S.GENRES] for g in genres})


def item_genre_flags(items: pd.DataFrame, genres: list[str]) -> pd.DataFrame:
    """One row per item (indexed by item id), one 0/1 int8 column ``genre_<slug>`` per genre."""
    exploded = items[[S.ITEM_ID, S.GENRES]].explode(S.GENRES).dropna()
    position = pd.Index(genres).get_indexer(exploded[S.GENRES])
    row = pd.Index(items[S.ITEM_ID]).get_indexer(exploded[S.ITEM_ID])
    flags = np.zeros((len(items), len(genres)), dtype=np.int8)
    flags[row, position] = 1
    columns = [S.genre_flag_column(g) for g in genres]
    return pd.DataFrame(flags, index=pd.Index(items[S.ITEM_ID].to_numpy(), name=S.ITEM_ID), columns=columns)


def window_sums(values: np.ndarray, window_start: np.ndarray, positions: np.ndarray, window: int) -> np.ndarray:
    """Sums of ``values`` rows over ``[max(window_start, p - window), p)`` for each position ``p``.

    ``values`` is (n, g) over timeline rows sorted by (user, time); ``window_start`` (the user's first
    row) and ``positions`` are (m,) global row indices; a position may be one past the user's last row.
    """
    prefix = np.zeros((len(values) + 1, values.shape[1]), dtype=np.int32)  # (n + 1, g)
    np.cumsum(values, axis=0, out=prefix[1:])
    lo = np.maximum(window_start, positions - window)
    return prefix[positions] - prefix[lo]  # (m, g)


def pit_counts(
    samples: pd.DataFrame,
    genre_flags: pd.DataFrame,
    genres: list[str],
    user_first_row: np.ndarray,
    positions: np.ndarray,
) -> pd.DataFrame:
    """Impression and click counts per genre (int16, ``imp_*`` then ``clk_*``) for hypothetical
    impressions at ``positions`` of ``samples`` (sorted by user, then ``seq``)."""
    flags = genre_flags.reindex(samples[S.ITEM_ID].to_numpy(), fill_value=0).to_numpy()  # (n, g)
    clicks = flags * samples[S.LABEL].to_numpy()[:, None]  # (n, g)
    impressions = window_sums(flags, user_first_row, positions, S.PIT_WINDOW)
    click_counts = window_sums(clicks, user_first_row, positions, S.PIT_WINDOW)
    counts = pd.DataFrame(np.hstack([impressions, click_counts]).astype(np.int16), columns=S.pit_columns(genres))
    history = history_stats(samples, user_first_row, positions)
    return pd.concat([counts, history], axis=1)


def history_stats(samples: pd.DataFrame, user_first_row: np.ndarray, positions: np.ndarray) -> pd.DataFrame:
    """The user's whole history strictly before each position: number of impressions, smoothed click
    rate and mean rating (shrunk towards the global prior with ``HISTORY_PRIOR_WEIGHT`` pseudo-counts)."""
    values = np.column_stack([np.ones(len(samples)), samples[S.LABEL].to_numpy(), samples[S.RATING].to_numpy()])
    prefix = np.zeros((len(samples) + 1, 3), dtype=np.float64)  # (n + 1, 3): count, clicks, rating sum
    np.cumsum(values, axis=0, out=prefix[1:])
    sums = prefix[positions] - prefix[user_first_row]  # (m, 3)
    prior_weight = S.HISTORY_PRIOR_WEIGHT
    click_rate = (sums[:, 1] + prior_weight * S.PRIOR_CLICK_RATE) / (sums[:, 0] + prior_weight)
    mean_rating = (sums[:, 2] + prior_weight * S.PRIOR_MEAN_RATING) / (sums[:, 0] + prior_weight)
    return pd.DataFrame(
        {
            S.HIST_N: sums[:, 0].astype(np.float32),
            S.HIST_CLICK_RATE: click_rate.astype(np.float32),
            S.HIST_MEAN_RATING: mean_rating.astype(np.float32),
        }
    )


def training_pit_features(samples: pd.DataFrame, genre_flags: pd.DataFrame, genres: list[str]) -> pd.DataFrame:
    """Features of every impression of ``samples`` (row-aligned), from strictly earlier impressions."""
    first_row = np.arange(len(samples)) - samples[S.SEQ].to_numpy()
    return pit_counts(samples, genre_flags, genres, first_row, np.arange(len(samples)))


def online_profile_positions(samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: (user id, first row, the position right after the user's last offline impression)."""
    users = samples[S.USER_ID].to_numpy()
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    offline = (samples[S.SPLIT] != S.SPLIT_ONLINE).to_numpy().astype(np.int64)
    n_offline = np.add.reduceat(offline, first)
    return users[first], first, first + n_offline


def online_user_profiles(samples: pd.DataFrame, genre_flags: pd.DataFrame, genres: list[str]) -> pd.DataFrame:
    """The serving profile per user: the point-in-time counts of a hypothetical next impression after
    the offline period, and the user's genre terms (``TERM_MIN_CLICKS`` clicks or more in that window)."""
    user_ids, first, positions = online_profile_positions(samples)
    counts = pit_counts(samples, genre_flags, genres, first, positions)
    clicks = counts[[S.click_column(g) for g in genres]].to_numpy()
    counts.insert(0, S.USER_ID, user_ids)
    counts[S.TERMS] = user_terms_from_clicks(clicks, genres)
    return counts


def user_terms_from_clicks(clicks: np.ndarray, genres: list[str]) -> list[list[str]]:
    """Genre terms per row: genres with at least ``TERM_MIN_CLICKS`` clicks, in genre order."""
    names = np.array(genres, dtype=object)
    return [list(names[row]) for row in clicks >= S.TERM_MIN_CLICKS]


def item_terms(items: pd.DataFrame) -> pd.DataFrame:
    """Item id and its genre terms (the item side of the term channel)."""
    return pd.DataFrame({S.ITEM_ID: items[S.ITEM_ID].to_numpy(), S.TERMS: items[S.GENRES].map(list)})
