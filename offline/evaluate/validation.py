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
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_json, read_npz, read_parquet
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.item_index import ItemIndex, neighbor_matrix
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import topk_metrics
from offline.common.user_states import split_by_user
from offline.preprocess.pit_features import item_genre_flags, list_genres, pit_counts, user_terms_from_clicks
from offline.rank.features import user_features_at
from offline.rank.scoring import load_session, score_pairs
from offline.rank.user_history import UserHistory
from offline.recall.next_item import onnx_user_vectors
from offline.recall.tables import popularity_table

log = logging.getLogger(__name__)


def validation_index(paths: ArtifactPaths, samples: pd.DataFrame) -> ItemIndex:
    """The in-process index as it would have been at the end of the training split (the vector model is
    trained on the train split only, so its item vectors are those of that time)."""
    index = ItemIndex.load(paths, with_vectors=paths.item_vectors_path.exists())
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


@dataclass
class ValidationRun:
    """The chain on the validation setup: per target user, each channel's list, the merged candidates and
    the ranker's like probability of every candidate."""

    target_users: np.ndarray
    relevant: list[np.ndarray]
    channel_lists: dict[str, list[np.ndarray]]
    candidates: list[chain.Candidates]
    like: list[np.ndarray]


def validation_vectors(
    paths: ArtifactPaths, histories: dict[int, tuple[np.ndarray, np.ndarray]]
) -> dict[int, np.ndarray]:
    """The vector model's user side of each train history (the model was trained on the train split only)."""
    if not paths.user_tower_onnx_path.exists():
        return {}
    window = int(read_json(paths.user_tower_args_path)["window"])
    vocab = read_npz(paths.item_vectors_path, (S.VECTOR_IDS,))[S.VECTOR_IDS].astype(np.int64)
    users = list(histories)
    vectors = onnx_user_vectors(paths.user_tower_onnx_path, [histories[u][0] for u in users],
                                [histories[u][1] for u in users], vocab, window)  # fmt: skip
    return dict(zip(users, vectors, strict=True))


def run_validation_chain(
    paths: ArtifactPaths, samples: pd.DataFrame, quotas: dict[str, int], triggers: chain.TriggerPolicy
) -> ValidationRun:
    """Recall, merge and the ranker's scores for every user with a test-split positive, as of the train split."""
    index = validation_index(paths, samples)
    user_features, terms = validation_user_features(paths, samples)
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    seen_users, seen = split_by_user(train, S.ITEM_ID)
    _, labels = split_by_user(train, S.LABEL)
    history = dict(zip(seen_users.tolist(), zip(seen, labels, strict=True), strict=True))
    target_users, relevant = split_by_user(
        samples[(samples[S.SPLIT] == S.SPLIT_TEST) & (samples[S.LABEL] == 1)], S.ITEM_ID
    )
    vectors = validation_vectors(paths, {u: history[u] for u in target_users.tolist() if u in history})
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int8))
    run = ValidationRun(target_users, relevant, {name: [] for name in chain.CHANNELS}, [], [])
    for user in tqdm(target_users.tolist(), desc="validation recall", mininterval=2, leave=False):
        items, item_labels = history.get(user, empty)
        state = chain.UserState(terms.get(user, []), vectors.get(user), items, item_labels.astype(np.int8))
        results, i2i_all = chain.recall_channels(index, state, quotas, triggers)
        for name in chain.CHANNELS:
            run.channel_lists[name].append(results.get(name, (np.zeros(0, np.int64), None))[0])
        run.candidates.append(chain.merge_candidates(results, *i2i_all))
    sizes = [len(c.items) for c in run.candidates]
    spec = FeatureSpec.load(paths.feature_spec_path)
    item_features = read_parquet(paths.item_features_path, (S.ITEM_ID,))
    like = score_pairs(load_session(paths.onnx_path), spec, user_features, item_features,
                       np.repeat(target_users, sizes), np.concatenate([c.items for c in run.candidates]))  # fmt: skip
    run.like = np.split(like, np.cumsum(sizes)[:-1])
    return run


def rank_lists(
    candidates: list[chain.Candidates], like: list[np.ndarray], policy: chain.RankingPolicy, k: int
) -> list[np.ndarray]:
    """The final lists of ``policy`` over every user's candidates."""
    pairs = zip(candidates, like, strict=True)
    return [chain.rank_and_cut(c, chain.final_scores(c, p, policy), k)[0] for c, p in pairs]


def select_ranking_policy(
    run: ValidationRun, k: int, like_grid: tuple[float, ...], vector_grid: tuple[float, ...]
) -> tuple[chain.RankingPolicy, list[dict[str, float]]]:
    """The ranking policy with the best validation NDCG@k, and every policy's metrics."""
    if not any(len(lst) for lst in run.channel_lists["vector"]):
        vector_grid = (0.0,)
    results: list[dict[str, float]] = []
    for vector_weight in vector_grid:
        for like_weight in like_grid:
            policy = chain.RankingPolicy(like_weight=like_weight, vector_weight=vector_weight)
            metrics = topk_metrics(rank_lists(run.candidates, run.like, policy, k), run.relevant, k)
            results.append({"like_weight": like_weight, "vector_weight": vector_weight, **metrics})
            log.info("validation: %s -> %s", policy, metrics)
    best = max(results, key=lambda r: (r["ndcg"], -r["like_weight"], -r["vector_weight"]))
    return chain.RankingPolicy(like_weight=best["like_weight"], vector_weight=best["vector_weight"]), results


def permutation_importance(
    run: ValidationRun, policy: chain.RankingPolicy, k: int, seed: int = 0
) -> dict[str, float]:
    """NDCG@k lost on validation when one input of the served score is shuffled among each user's
    candidates: the item-to-item evidence, the vector evidence, the ranker's like probability, the
    channel prior (the rank in the proposing channel)."""
    rng = np.random.default_rng(seed)

    def ndcg(candidates: list[chain.Candidates], like: list[np.ndarray]) -> float:
        return float(topk_metrics(rank_lists(candidates, like, policy, k), run.relevant, k)["ndcg"])

    base = ndcg(run.candidates, run.like)

    def shuffled(c: chain.Candidates, field_name: str) -> chain.Candidates:
        values = getattr(c, field_name)
        return dataclasses.replace(c, **{field_name: values[rng.permutation(len(values))]}) if len(values) else c

    out: dict[str, float] = {}
    for name, field_name in (("i2i", "i2i_score"), ("vector", "vector_score"), ("channel_prior", "rank_in_channel")):
        candidates = [shuffled(c, field_name) for c in run.candidates]
        out[name] = round(base - ndcg(candidates, run.like), 5)
    out["ranker_like"] = round(base - ndcg(run.candidates, [p[rng.permutation(len(p))] for p in run.like]), 5)
    return out
