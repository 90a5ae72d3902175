"""Selections of the final-score policy on a validation setup that never sees the online holdout.

The validation setup ends the timeline at the training split: triggers and seen items are the user's
train impressions, the item-to-item neighbours are fitted on the train split only
(``recall/validation_item_neighbors.parquet``, written by recall/3), user features are the
point-in-time profile right after the last train impression, and the targets are the positives of the
test split. The same chain steps as serving then produce candidates and final lists.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.item_index import ItemIndex, neighbor_matrix
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import topk_metrics
from offline.common.user_states import split_by_user
from offline.preprocess.pit_features import item_genre_flags, list_genres, pit_counts, user_terms_from_clicks
from offline.rank.features import user_features_at
from offline.rank.scoring import load_session, score_pairs
from offline.rank.user_history import UserHistory
from offline.recall.tables import popularity_table

log = logging.getLogger(__name__)


def validation_index(paths: ArtifactPaths, samples: pd.DataFrame) -> ItemIndex:
    """The in-process index as it would have been at the end of the training split (no vectors)."""
    index = ItemIndex.load(paths, with_vectors=False)
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    popularity = popularity_table(train.assign(**{S.SPLIT: S.SPLIT_TRAIN})).set_index(S.ITEM_ID)[S.SCORE]
    neighbors = read_parquet(paths.validation_neighbors_path, (S.ITEM_ID, S.NEIGHBOR, S.WEIGHT))
    nbr_items, nbr_weights = neighbor_matrix(neighbors, index.item_ids)
    return dataclasses.replace(
        index,
        popularity=popularity.reindex(index.item_ids, fill_value=0.0).to_numpy(np.float32),
        neighbor_items=nbr_items,
        neighbor_weights=nbr_weights,
    )


def validation_user_features(paths: ArtifactPaths, samples: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """User features and terms at the position right after each user's last train impression."""
    items = read_parquet(paths.items_path, S.ITEMS_COLUMNS)
    genres = list_genres(items)
    users = samples[S.USER_ID].to_numpy()
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    n_train = np.add.reduceat((samples[S.SPLIT] == S.SPLIT_TRAIN).to_numpy().astype(np.int64), first)
    flags = item_genre_flags(items, genres)
    positions = first + n_train
    profiles = pit_counts(samples, flags, genres, first, positions)
    clicks = profiles[[S.click_column(g) for g in genres]].to_numpy()
    terms = dict(zip(users[first].tolist(), user_terms_from_clicks(clicks, genres), strict=True))
    profiles.insert(0, S.USER_ID, users[first])
    row_flags = flags.reindex(samples[S.ITEM_ID].to_numpy(), fill_value=0).to_numpy()  # (n, n_genres)
    history = UserHistory.from_samples(samples, row_flags)
    user_table = read_parquet(paths.users_path, (S.USER_ID,))
    return user_features_at(history, user_table, profiles, first, positions, genres), terms


def select_like_weight(
    paths: ArtifactPaths,
    samples: pd.DataFrame,
    quotas: dict[str, int],
    triggers: chain.TriggerPolicy,
    k: int,
    grid: tuple[float, ...],
) -> tuple[float, dict[float, dict[str, float]]]:
    """The like weight of the final score with the best validation NDCG@k, and every weight's metrics."""
    index = validation_index(paths, samples)
    user_features, terms = validation_user_features(paths, samples)
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    seen_users, seen = split_by_user(train, S.ITEM_ID)
    _, labels = split_by_user(train, S.LABEL)
    history = dict(zip(seen_users.tolist(), zip(seen, labels, strict=True), strict=True))
    target_users, relevant = split_by_user(
        samples[(samples[S.SPLIT] == S.SPLIT_TEST) & (samples[S.LABEL] == 1)], S.ITEM_ID
    )
    validation_quotas = {**quotas, "vector": 0}  # the exported vectors were fitted on the whole offline period
    candidates = []
    for user in tqdm(target_users.tolist(), desc="validation recall", mininterval=2, leave=False):
        items, item_labels = history.get(user, (np.zeros(0, np.int64), np.zeros(0, np.int8)))
        state = chain.UserState(terms.get(user, []), None, items, item_labels.astype(np.int8))
        results, i2i_all = chain.recall_channels(index, state, validation_quotas, triggers)
        candidates.append(chain.merge_candidates(results, *i2i_all))
    sizes = [len(c.items) for c in candidates]
    spec = FeatureSpec.load(paths.feature_spec_path)
    item_features = read_parquet(paths.item_features_path, (S.ITEM_ID,))
    like = score_pairs(load_session(paths.onnx_path), spec, user_features, item_features,
                       np.repeat(target_users, sizes), np.concatenate([c.items for c in candidates]))  # fmt: skip
    like_per_user = np.split(like, np.cumsum(sizes)[:-1])
    results_by_weight: dict[float, dict[str, float]] = {}
    for weight in grid:
        policy = chain.RankingPolicy(like_weight=weight)
        lists = [
            chain.rank_and_cut(c, chain.final_scores(c, p, policy), k)[0]
            for c, p in zip(candidates, like_per_user, strict=True)
        ]
        results_by_weight[weight] = topk_metrics(lists, relevant, k)
        log.info("validation: like weight %.2f -> %s", weight, results_by_weight[weight])
    best = max(grid, key=lambda w: (results_by_weight[w]["ndcg"], -w))
    return best, results_by_weight
