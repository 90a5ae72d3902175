"""The recall candidates the ranker learns on: the chain at a point in time, labelled by what came next.

The validation setup ends the timeline at the training split: triggers and seen items are the user's
train impressions, the item-to-item neighbours are fitted on the train split only
(``recall/validation_item_neighbors.parquet``, written by recall/3), the vector model was trained on the
train split only (its user side runs on the train history), user features are the point-in-time profile
right after the last train impression. For every user with a test-split positive, the same chain steps
as serving produce each channel's list and the merged candidates; a candidate is labelled *watched* when
it is among the user's test-split impressions and *liked* when that impression is positive.

The ranker's watch head is fitted on the candidates of one half of these users (a stable hash of the
user id, ``is_fit_user``) and selected on the other half; the report's validation figures use the other
half only, so no figure is measured on the rows that fitted the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_json, read_npz, read_parquet
from data_exchange_center.feature_spec import FeatureSpec, combine_features
from data_exchange_center.item_index import ItemIndex, neighbor_matrix
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import evaluation_sample
from offline.common.user_states import split_by_user
from offline.preprocess.pit_features import item_genre_flags, list_genres, pit_counts, user_terms_from_clicks
from offline.rank.features import user_features_at
from offline.rank.user_history import UserHistory
from offline.recall.next_item import onnx_user_vectors
from offline.recall.tables import popularity_table

_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def is_fit_user(userids: np.ndarray) -> np.ndarray:
    """True for the users whose candidates fit the ranker's watch head (about half, stable across runs and
    machines: a multiplicative hash of the user id); the others select and report."""
    hashed = np.asarray(userids, dtype=np.int64).astype(np.uint64) * _HASH_MULTIPLIER
    return (hashed >> np.uint64(63)) == 0


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


@dataclass
class CandidateSets:
    """The chain on the validation setup: per target user, each channel's list, the merged candidates and
    the test-split items (all of them: watched; the positives: relevant)."""

    target_users: np.ndarray  # (n_users,) int64
    relevant: list[np.ndarray]
    watched: list[np.ndarray]
    channel_lists: dict[str, list[np.ndarray]]
    candidates: list[chain.Candidates]
    user_features: pd.DataFrame  # one row per user, at the end of the train split

    def subset(self, keep: np.ndarray) -> CandidateSets:
        """The users where ``keep`` (n_users,) is true."""
        rows = np.flatnonzero(keep)
        pick = lambda values: [values[i] for i in rows]  # noqa: E731
        lists = {name: pick(values) for name, values in self.channel_lists.items()}
        return CandidateSets(self.target_users[rows], pick(self.relevant), pick(self.watched), lists,
                             pick(self.candidates), self.user_features)  # fmt: skip

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(c.items) for c in self.candidates], dtype=np.int64)

    def watched_labels(self) -> np.ndarray:
        """(n_rows,) float32: 1 where the candidate is among the user's test-split items."""
        parts = [np.isin(c.items, w) for c, w in zip(self.candidates, self.watched, strict=True)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def encode(self, spec: FeatureSpec, item_features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs of every (user, candidate) row, users in order: sparse (n, n_sparse) int64 and dense
        (n, n_dense) float32 with the candidates' evidence, encoded as serving encodes them."""
        sizes = self.sizes
        user_rows = pd.Index(self.user_features[S.USER_ID]).get_indexer(np.repeat(self.target_users, sizes))
        items = np.concatenate([c.items for c in self.candidates])
        item_rows = pd.Index(item_features[S.ITEM_ID]).get_indexer(items)
        if (user_rows < 0).any() or (item_rows < 0).any():
            raise ValueError("a candidate's user or item has no feature row")
        user_sparse, user_dense = spec.encode_users(self.user_features)
        item_sparse, item_dense = spec.encode_items(item_features)
        evidence = np.concatenate([chain.candidate_evidence(c) for c in self.candidates])
        user_part = (user_sparse[user_rows], user_dense[user_rows])
        item_part = (item_sparse[item_rows], item_dense[item_rows])
        return combine_features(user_part, item_part, spec.evidence(evidence, len(items)))


def validation_candidates(
    paths: ArtifactPaths, samples: pd.DataFrame, quotas: dict[str, int], triggers: chain.TriggerPolicy
) -> CandidateSets:
    """Recall and merge for every user with a test-split positive (``evaluation_sample`` of them), as of the
    end of the train split."""
    index = validation_index(paths, samples)
    test = samples[samples[S.SPLIT] == S.SPLIT_TEST]
    target_users, relevant = split_by_user(test[test[S.LABEL] == 1], S.ITEM_ID)
    keep = evaluation_sample(target_users)
    target_users, relevant = target_users[keep], [r for r, k in zip(relevant, keep, strict=True) if k]
    samples = samples[samples[S.USER_ID].isin(target_users)]  # from here on, the evaluated users' timelines only
    test = samples[samples[S.SPLIT] == S.SPLIT_TEST]
    user_features, terms = validation_user_features(paths, samples)
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    seen_users, seen = split_by_user(train, S.ITEM_ID)
    _, labels = split_by_user(train, S.LABEL)
    history = dict(zip(seen_users.tolist(), zip(seen, labels, strict=True), strict=True))
    test_users, test_items = split_by_user(test, S.ITEM_ID)
    watched_of = dict(zip(test_users.tolist(), test_items, strict=True))
    vectors = validation_vectors(paths, {u: history[u] for u in target_users.tolist() if u in history})
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int8))
    sets = CandidateSets(target_users, relevant, [watched_of[u] for u in target_users.tolist()],
                         {name: [] for name in chain.CHANNELS}, [], user_features)  # fmt: skip
    for user in tqdm(target_users.tolist(), desc="validation recall", mininterval=2, leave=False):
        items, item_labels = history.get(user, empty)
        state = chain.UserState(terms.get(user, []), vectors.get(user), items, item_labels.astype(np.int8))
        results, i2i_all = chain.recall_channels(index, state, quotas, triggers)
        for name in chain.CHANNELS:
            sets.channel_lists[name].append(results.get(name, (np.zeros(0, np.int64), None))[0])
        sets.candidates.append(chain.merge_candidates(results, *i2i_all))
    return sets
