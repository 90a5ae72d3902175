"""User history features for ranking, evaluated at any point of a user's timeline.

Beside the preprocess point-in-time counts (``imp_*``/``clk_*`` over the previous 10 impressions and
the ``hist_*`` statistics), ranking uses the recent windows and the genre affinities named in
``data_exchange_center.user_history`` (which also computes all of them for one timeline, online). The
ranker crosses the affinities with the candidate's genres.

Every value at position ``p`` uses only the user's impressions strictly before ``p``; the serving
profile is the same function at the position right after the user's last offline impression, so
training rows and serving rows cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.user_history import (
    AFFINITY_PRIOR_WEIGHT,
    RECENT_WINDOWS,
    all_affinity_columns,
    window_columns,
)

CHUNK_ROWS = 131_072  # positions evaluated at once


@dataclass(frozen=True)
class UserHistory:
    """Prefix sums over a timeline sorted by (user, time): any position's history in O(1)."""

    events: np.ndarray  # (n + 1, 3) float64: cumulative impressions, clicks, rating sum
    genre_impressions: np.ndarray  # (n + 1, n_genres) int32: cumulative impressions per genre
    genre_clicks: np.ndarray  # (n + 1, n_genres) int32: cumulative clicks per genre

    @classmethod
    def from_samples(cls, samples: pd.DataFrame, genre_flags: np.ndarray) -> UserHistory:
        """``samples`` sorted by (user, seq); ``genre_flags`` (n, n_genres) 0/1 of each row's item."""
        labels = samples[S.LABEL].to_numpy()
        values = np.column_stack([np.ones(len(samples)), labels, samples[S.RATING].to_numpy()])  # (n, 3)
        return cls(
            events=_prefix_sums(values, np.float64),
            genre_impressions=_prefix_sums(genre_flags, np.int32),
            genre_clicks=_prefix_sums(genre_flags * labels[:, None].astype(genre_flags.dtype), np.int32),
        )

    def features_at(
        self, first_row: np.ndarray, positions: np.ndarray, window_counts: pd.DataFrame, genres: list[str]
    ) -> pd.DataFrame:
        """Window and affinity features (float32, ``window_columns`` then ``all_affinity_columns``) for
        hypothetical impressions at ``positions``.

        ``first_row`` is each position's user's first row; ``window_counts`` holds the preprocess
        point-in-time columns (``imp_*``, ``clk_*``, ``hist_click_rate``) at the same positions.
        """
        n_windows = 2 * len(RECENT_WINDOWS)
        out = np.empty((len(positions), n_windows + 3 * len(genres)), dtype=np.float32)  # (m, k)
        for start in range(0, len(positions), CHUNK_ROWS):  # chunks bound the temporaries
            rows = slice(start, start + CHUNK_ROWS)
            self.fill_recent_windows(first_row[rows], positions[rows], out[rows, :n_windows])
            counts = window_counts.iloc[rows]
            self.fill_genre_affinities(first_row[rows], positions[rows], counts, genres, out[rows, n_windows:])
        return pd.DataFrame(out, columns=window_columns() + all_affinity_columns(genres), copy=False)

    def fill_recent_windows(self, first_row: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
        """Smoothed click rate (columns ``0..w-1``) and mean rating (``w..2w-1``) of each recent window."""
        weight = S.HISTORY_PRIOR_WEIGHT
        n_windows = len(RECENT_WINDOWS)
        for j, window in enumerate(RECENT_WINDOWS):
            start = np.maximum(first_row, positions - window)
            n, clicks, ratings = (self.events[positions] - self.events[start]).T  # (m,) each
            out[:, j] = (clicks + weight * S.PRIOR_CLICK_RATE) / (n + weight)
            out[:, n_windows + j] = (ratings + weight * S.PRIOR_MEAN_RATING) / (n + weight)

    def fill_genre_affinities(
        self,
        first_row: np.ndarray,
        positions: np.ndarray,
        window_counts: pd.DataFrame,
        genres: list[str],
        out: np.ndarray,
    ) -> None:
        """Per genre: whole-history click rate, recent click rate, whole-history share (in that order)."""
        g = len(genres)
        prior = window_counts[S.HIST_CLICK_RATE].to_numpy(dtype=np.float32)[:, None]  # (m, 1)
        weight = np.float32(AFFINITY_PRIOR_WEIGHT)
        long_imp = (self.genre_impressions[positions] - self.genre_impressions[first_row]).astype(np.float32)  # (m, g)
        long_clk = (self.genre_clicks[positions] - self.genre_clicks[first_row]).astype(np.float32)  # (m, g)
        out[:, :g] = (long_clk + weight * prior) / (long_imp + weight)
        del long_clk
        n_history = (self.events[positions, 0] - self.events[first_row, 0]).astype(np.float32)[:, None]  # (m, 1)
        out[:, 2 * g :] = long_imp / np.maximum(n_history, 1.0)
        del long_imp
        recent_imp = window_counts[[S.impression_column(x) for x in genres]].to_numpy(dtype=np.float32)  # (m, g)
        recent_clk = window_counts[[S.click_column(x) for x in genres]].to_numpy(dtype=np.float32)  # (m, g)
        out[:, g : 2 * g] = (recent_clk + weight * prior) / (recent_imp + weight)


def _prefix_sums(values: np.ndarray, dtype: type) -> np.ndarray:
    prefix: np.ndarray = np.zeros((len(values) + 1, values.shape[1]), dtype=dtype)  # (n + 1, k)
    np.cumsum(values, axis=0, dtype=dtype, out=prefix[1:])
    return prefix
