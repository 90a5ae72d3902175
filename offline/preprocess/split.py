"""Implicit labels and the per-user, time-ordered split into offline train/test and online holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from offline.common.stage import DataError


def label_implicit(ratings: pd.Series) -> np.ndarray:
    """1 where the rating is above the positive threshold (rating > 3), else 0, as int8."""
    return (ratings.to_numpy() > S.POSITIVE_RATING_THRESHOLD).astype(np.int8)


def split_by_time(
    ratings: pd.DataFrame,
    n_online: int = S.N_ONLINE_PER_USER,
    train_fraction: float = S.TRAIN_FRACTION,
) -> pd.DataFrame:
    """Order each user's impressions by time (ties in file order) and assign splits.

    The last ``n_online`` impressions of a user are the online holdout; of the rest, the first
    ``ceil(train_fraction * n)`` are offline train and the remainder offline test. The result is
    sorted by (user, time) with a 0-based ``seq`` per user and keeps only ``SAMPLES_COLUMNS``.
    """
    if ratings.empty:
        raise DataError("no ratings to split")
    order = np.lexsort((np.arange(len(ratings)), ratings[S.TIMESTAMP].to_numpy(), ratings[S.USER_ID].to_numpy()))
    samples = ratings.iloc[order].reset_index(drop=True)
    users = samples[S.USER_ID].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    seq = np.arange(len(users)) - np.repeat(starts, counts)
    n_user = np.repeat(counts, counts)
    n_offline = np.maximum(n_user - n_online, 0)
    n_train = np.ceil(n_offline * train_fraction - 1e-9).astype(np.int64)  # as the reference: test = floor(20%)
    split = np.where(seq >= n_offline, S.SPLIT_ONLINE, np.where(seq < n_train, S.SPLIT_TRAIN, S.SPLIT_TEST))
    samples[S.LABEL] = label_implicit(samples[S.RATING])
    samples[S.SEQ] = seq.astype(np.int32)
    samples[S.SPLIT] = pd.Categorical(split, categories=list(S.SPLITS))
    for name in (S.SPLIT_TRAIN, S.SPLIT_TEST):
        if not (samples[S.SPLIT] == name).any():
            raise DataError(
                f"the {name} split is empty: users need more than {n_online} ratings "
                f"({len(ratings)} ratings from {len(starts)} users given)"
            )
    return samples[list(S.SAMPLES_COLUMNS)]


def summarize_split(samples: pd.DataFrame) -> dict[str, int]:
    counts = samples[S.SPLIT].value_counts()
    n_positive = int(samples[S.LABEL].sum())
    return {
        "n_online": int(counts.get(S.SPLIT_ONLINE, 0)),
        "n_train": int(counts.get(S.SPLIT_TRAIN, 0)),
        "n_test": int(counts.get(S.SPLIT_TEST, 0)),
        "n_positive": n_positive,
        "n_negative": len(samples) - n_positive,
    }
