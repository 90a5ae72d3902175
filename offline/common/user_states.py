"""The offline reader of the user artifacts, and per-user recommenders for each recall channel.

``UserStates`` is the one offline reader of the user artifacts (``preprocess/user_profiles.parquet``,
``recall/user_seen.parquet``, ``recall/user_vectors.npz``): what the embedded profile store serves.
The recall stages evaluate their own channel with ``channel_recommender``; the top-K report evaluates
all of them, the merged candidates and the final ranked list (``offline/evaluate/s1_topk_report.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_npz, read_parquet
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.paths import ArtifactPaths

Recommender = Callable[[int], np.ndarray]


class UserStates:
    """User terms, vectors and seen items from the artifacts (the embedded profile store's content)."""

    def __init__(self, paths: ArtifactPaths, with_vectors: bool = True) -> None:
        profiles = read_parquet(paths.user_profiles_path, (S.USER_ID, S.TERMS))
        self.terms = dict(zip(profiles[S.USER_ID].to_numpy(), profiles[S.TERMS], strict=True))
        seen = read_parquet(paths.user_seen_path, (S.USER_ID, S.ITEMS, S.LABELS, S.RATINGS))
        self.seen = dict(zip(seen[S.USER_ID].to_numpy(), seen[S.ITEMS], strict=True))
        self.labels = dict(zip(seen[S.USER_ID].to_numpy(), seen[S.LABELS], strict=True))
        self.ratings = dict(zip(seen[S.USER_ID].to_numpy(), seen[S.RATINGS], strict=True))
        self.vectors: dict[int, np.ndarray] = {}
        if with_vectors:
            arrays = read_npz(paths.user_vectors_path, (S.VECTOR_IDS, S.VECTORS))
            self.vectors = dict(zip(arrays[S.VECTOR_IDS].tolist(), arrays[S.VECTORS], strict=True))

    def get(self, user_id: int) -> chain.UserState:
        empty = np.zeros(0, dtype=np.int64)
        return chain.UserState(
            terms=list(self.terms.get(user_id, [])),
            vector=self.vectors.get(user_id),
            seen=np.asarray(self.seen.get(user_id, empty), dtype=np.int64),
            seen_labels=np.asarray(self.labels.get(user_id, empty), dtype=np.int8),
            seen_ratings=np.asarray(self.ratings.get(user_id, empty), dtype=np.float32),
        )


def channel_recommender(
    index: ItemIndex, users: UserStates, channel: str, k: int, triggers: chain.TriggerPolicy | None = None
) -> Recommender:
    """Top ``k`` of one channel, filled up with popularity when the channel has fewer than ``k`` items."""

    def recommend(user_id: int) -> np.ndarray:
        user = users.get(user_id)
        quotas = {channel: k, "popularity": k}
        results, _ = chain.recall_channels(index, user, quotas, triggers or chain.TriggerPolicy())
        own = results.get(channel, (np.zeros(0, np.int64), None))[0]
        fill = results["popularity"][0]
        return np.concatenate([own, fill[~np.isin(fill, own)]])[:k]

    return recommend


def split_by_user(rows: pd.DataFrame, column: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """User ids and, per user, the values of ``column`` (rows sorted by user; order kept)."""
    users = rows[S.USER_ID].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    return users[starts].astype(np.int64), np.split(rows[column].to_numpy(), starts[1:])


BLOCK_ROWS = 4_000_000  # rows per block of whole users in the large stages: bounds their memory (ML-1M: one block)


def user_blocks(user_ids: np.ndarray, max_rows: int = BLOCK_ROWS) -> list[slice]:
    """Consecutive row ranges of a table sorted by user, each of whole users and at most ``max_rows`` rows
    (a user with more rows gets a block alone); at least one range, so an empty table has one empty block."""
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]]) if len(user_ids) else np.zeros(1, np.int64)
    bounds = np.r_[starts, len(user_ids)]
    blocks, lo = [], 0
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if stop - lo > max_rows and start > lo:
            blocks.append(slice(lo, int(start)))
            lo = int(start)
    blocks.append(slice(lo, len(user_ids)))
    return blocks
