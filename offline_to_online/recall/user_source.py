"""The user side of recall as one checked table: terms, vector and seen items per user.

Reads ``preprocess/user_profiles.parquet`` (userid, terms), ``recall/user_seen.parquet`` (userid, items,
labels) and ``recall/user_vectors.npz`` (ids, vectors), checks them against their contracts and against
each other (and the item vectors' dimension), and aligns them on the sorted union of user ids. Nothing
is published from artifacts that fail a check.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_npz, read_parquet
from data_exchange_center.events import EVENT_SEQ
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.redis_layout import UserProfileRecord

_EMPTY_ITEMS = np.zeros(0, dtype=np.int64)
_EMPTY_LABELS = np.zeros(0, dtype=np.int8)
_EMPTY_RATINGS = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class UserSource:
    """Per-user recall inputs aligned on ``userids`` (sorted, unique)."""

    userids: np.ndarray  # (n_users,) int64
    terms: list[list[str]]  # (n_users,) terms per user ([] when none)
    vector_rows: np.ndarray  # (n_users,) int64 row of ``vectors``, -1 when the user has no vector
    vectors: np.ndarray  # (n_vectors, dim) float32
    seen: list[np.ndarray]  # (n_users,) int64 item ids in time order
    seen_labels: list[np.ndarray]  # (n_users,) int8 labels aligned with ``seen``
    seen_ratings: list[np.ndarray]  # (n_users,) float32 ratings aligned with ``seen``
    base_event_seqs: np.ndarray | None = None  # (n_users,) int64: the newest event in the seen items, 0 = none
    vector_tower: str | None = None  # the SHA-256 of the user tower that computed ``vectors`` (None: unknown)

    @property
    def n_users(self) -> int:
        return len(self.userids)

    @property
    def vector_dim(self) -> int:
        return int(self.vectors.shape[1])

    def record(self, position: int) -> UserProfileRecord:
        row = int(self.vector_rows[position])
        return UserProfileRecord(
            userid=int(self.userids[position]),
            terms=self.terms[position],
            vector=self.vectors[row] if row >= 0 else None,
            seen=self.seen[position],
            seen_labels=self.seen_labels[position],
            seen_ratings=self.seen_ratings[position],
            base_event_seq=int(self.base_event_seqs[position]) if self.base_event_seqs is not None else 0,
        )


def load_user_source(paths: ArtifactPaths) -> UserSource:
    """Read and check the three user artifacts; ``ArtifactError`` names the file and the problem."""
    profiles = read_parquet(paths.user_profiles_path, (S.USER_ID, S.TERMS))
    seen = read_parquet(paths.user_seen_path, (S.USER_ID, S.ITEMS, S.LABELS, S.RATINGS))
    vectors = read_npz(paths.user_vectors_path, (S.VECTOR_IDS, S.VECTORS))
    ids, matrix = check_vectors(vectors, paths.user_vectors_path.name)
    check_vector_dims(paths)
    require_unique(profiles[S.USER_ID], paths.user_profiles_path.name)
    require_unique(seen[S.USER_ID], paths.user_seen_path.name)
    source = dataclasses.replace(align_users(profiles, seen, ids, matrix), vector_tower=vector_tower_of(vectors))
    if paths.event_seqs_path.exists():
        event_seqs = read_parquet(paths.event_seqs_path, (S.USER_ID, S.ITEM_ID, EVENT_SEQ))
        source = dataclasses.replace(source, base_event_seqs=base_event_seqs(source, event_seqs))
    return source


def base_event_seqs(source: UserSource, event_seqs: pd.DataFrame) -> np.ndarray:
    """Per user, the store sequence number of the newest event-log rating among the seen items (0: none).

    The published seen items are the user's ratings before the online holdout. ``fetch --events`` puts
    the events after the dataset's ratings, so the events in the base are the user's oldest events and
    the rest (in the holdout, or stored after the fetch) are newer: the service applies the events after
    this watermark on top of the published profile, and none twice."""
    out = np.zeros(source.n_users, dtype=np.int64)
    if event_seqs.empty:
        return out
    lengths = np.fromiter((len(s) for s in source.seen), dtype=np.int64, count=source.n_users)
    pairs = pd.DataFrame({S.USER_ID: np.repeat(source.userids, lengths),
                          S.ITEM_ID: np.concatenate([*source.seen, _EMPTY_ITEMS])})  # fmt: skip
    hits = pairs.merge(event_seqs, on=[S.USER_ID, S.ITEM_ID], how="inner")
    newest = hits.groupby(S.USER_ID)[EVENT_SEQ].max()
    out[np.searchsorted(source.userids, newest.index.to_numpy(np.int64))] = newest.to_numpy(np.int64)
    return out


def vector_tower_of(arrays: dict[str, np.ndarray]) -> str | None:
    """The tower's SHA-256 stored with the user vectors (None in artifacts written before it was)."""
    tower = arrays.get(S.VECTOR_TOWER)
    if tower is None:
        return None
    value = str(tower)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ArtifactError(f"user vectors: {S.VECTOR_TOWER} must be a hex SHA-256, got {value[:80]!r}")
    return value


def check_vectors(arrays: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` int (n,) unique and ``vectors`` float (n, dim) finite; returns them as int64/float32."""
    ids, matrix = arrays[S.VECTOR_IDS], arrays[S.VECTORS]
    if ids.ndim != 1 or matrix.ndim != 2 or len(ids) != len(matrix) or matrix.shape[1] < 1:
        raise ArtifactError(f"{name}: ids {ids.shape} and vectors {matrix.shape} must be (n,) and (n, dim)")
    if not np.issubdtype(ids.dtype, np.integer) or not np.issubdtype(matrix.dtype, np.floating):
        raise ArtifactError(f"{name}: ids must be integers and vectors floats, got {ids.dtype} and {matrix.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise ArtifactError(f"{name}: duplicate ids; re-run the stage that wrote it")
    if not np.isfinite(matrix).all():
        raise ArtifactError(f"{name}: vectors hold NaN or infinite values; re-run the stage that wrote it")
    return ids.astype(np.int64), matrix.astype(np.float32)


def check_vector_dims(paths: ArtifactPaths) -> None:
    """User and item vectors must share their dimension (inner-product search needs it)."""
    if not (paths.user_vectors_path.exists() and paths.item_vectors_path.exists()):
        return
    user_dim = read_npz(paths.user_vectors_path, (S.VECTORS,))[S.VECTORS].shape[-1]
    item_dim = read_npz(paths.item_vectors_path, (S.VECTORS,))[S.VECTORS].shape[-1]
    if item_dim != user_dim:
        raise ArtifactError(
            f"user vectors have dim {user_dim} but item vectors dim {item_dim}: both must come from one "
            "run of offline/recall/s2_vector_recall.py"
        )


def require_unique(ids: pd.Series, name: str) -> None:
    if ids.duplicated().any():
        raise ArtifactError(f"{name}: duplicate user ids (e.g. {ids[ids.duplicated()].head(3).tolist()})")


def align_users(profiles: pd.DataFrame, seen: pd.DataFrame, vector_ids: np.ndarray, vectors: np.ndarray) -> UserSource:
    """Join the three sources on the sorted union of their user ids."""
    userids = np.union1d(
        np.union1d(profiles[S.USER_ID].to_numpy(np.int64), seen[S.USER_ID].to_numpy(np.int64)), vector_ids
    )
    index = pd.Index(userids)
    terms: list[list[str]] = [[] for _ in range(len(userids))]
    for pos, user_terms in zip(index.get_indexer(profiles[S.USER_ID]), profiles[S.TERMS], strict=True):
        terms[pos] = [] if user_terms is None else [str(t) for t in user_terms]
    seen_items = [_EMPTY_ITEMS] * len(userids)
    seen_labels = [_EMPTY_LABELS] * len(userids)
    seen_ratings = [_EMPTY_RATINGS] * len(userids)
    for pos, items, labels, ratings, userid in zip(
        index.get_indexer(seen[S.USER_ID]), seen[S.ITEMS], seen[S.LABELS], seen[S.RATINGS], seen[S.USER_ID],
        strict=True,
    ):
        items_arr = np.asarray(items if items is not None else [], dtype=np.int64)
        labels_arr = np.asarray(labels if labels is not None else [], dtype=np.int8)
        ratings_arr = np.asarray(ratings if ratings is not None else [], dtype=np.float32)
        if not len(items_arr) == len(labels_arr) == len(ratings_arr):
            raise ArtifactError(
                f"user_seen.parquet: user {userid} has {len(items_arr)} items but {len(labels_arr)} labels "
                f"and {len(ratings_arr)} ratings"
            )
        seen_items[pos], seen_labels[pos], seen_ratings[pos] = items_arr, labels_arr, ratings_arr
    vector_rows = np.full(len(userids), -1, dtype=np.int64)
    vector_rows[index.get_indexer(vector_ids)] = np.arange(len(vector_ids))
    return UserSource(userids, terms, vector_rows, vectors, seen_items, seen_labels, seen_ratings)
