"""The tables that the recall stages write: the popularity channel and the users' seen items."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from offline.common.user_states import split_by_user


def popularity_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Items by number of positive offline impressions (the popularity channel), most popular first."""
    offline = samples[(samples[S.SPLIT] != S.SPLIT_ONLINE) & (samples[S.LABEL] == 1)]
    counts = offline.groupby(S.ITEM_ID).size().sort_values(ascending=False, kind="stable")
    return pd.DataFrame({S.ITEM_ID: counts.index.to_numpy(np.int64), S.SCORE: counts.to_numpy(np.float32)})


def user_seen_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Per user, the offline items in time order with their labels (the seen filter and i2i triggers) and
    ratings (the ranker's history features of a user with live events)."""
    offline = samples[samples[S.SPLIT] != S.SPLIT_ONLINE]  # sorted by user, then time
    user_ids, items = split_by_user(offline, S.ITEM_ID)
    _, labels = split_by_user(offline, S.LABEL)
    _, ratings = split_by_user(offline, S.RATING)
    return pd.DataFrame({S.USER_ID: user_ids, S.ITEMS: items, S.LABELS: [a.astype(np.int8) for a in labels],
                         S.RATINGS: [a.astype(np.float32) for a in ratings]})  # fmt: skip
