"""The embedded user profile store: the live version of ``online/users/`` held in memory as arrays.

A version folder (``data_exchange_center.online_layout``) is read once into flat arrays: sorted user
ids, the seen items of all users concatenated with per-user offsets, and a vector matrix. A look-up is
one binary search and a few slices (no pandas, no file reads); the state's arrays are views into the
snapshot, which is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_json, read_npz
from data_exchange_center.chain import UserState
from data_exchange_center.settings import Settings
from online.backends.base import ReadyStatus
from online.backends.versions import Refreshing


@dataclass(frozen=True)
class UserTable:
    version: str
    userids: np.ndarray  # (n_users,) int64, sorted
    terms: list[list[str]]  # (n_users,)
    seen_offsets: np.ndarray  # (n_users + 1,) int64
    seen_items: np.ndarray  # (total_seen,) int64
    seen_labels: np.ndarray  # (total_seen,) int8
    vector_rows: np.ndarray  # (n_users,) int64, -1 when the user has no vector
    vectors: np.ndarray  # (n_vectors, dim) float32
    base_event_seqs: np.ndarray  # (n_users,) int64, 0 when no event-log rating is in the base
    seen_ratings: np.ndarray | None = None  # (total_seen,) float32 aligned with seen_items; None: not published
    vector_tower: str | None = None  # the SHA-256 of the user tower that computed ``vectors`` (manifest)

    def lookup(self, userid: int) -> UserState | None:
        pos = int(np.searchsorted(self.userids, userid))
        if pos >= len(self.userids) or self.userids[pos] != userid:
            return None
        lo, hi = self.seen_offsets[pos], self.seen_offsets[pos + 1]
        row = self.vector_rows[pos]
        return UserState(
            terms=self.terms[pos],
            vector=self.vectors[row] if row >= 0 else None,
            seen=self.seen_items[lo:hi],
            seen_labels=self.seen_labels[lo:hi],
            base_event_seq=int(self.base_event_seqs[pos]),
            seen_ratings=self.seen_ratings[lo:hi] if self.seen_ratings is not None else None,
            vector_tower=self.vector_tower,
        )


def _list_column(table: pa.Table, name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list<...> column as (offsets (n+1,), flat values)."""
    column = table.column(name).combine_chunks()
    if column.null_count:
        column = column.fill_null(pa.scalar([], column.type))
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(dtype)
    return offsets - offsets[0], values[offsets[0] : offsets[-1]]


def load_user_table(version_dir: Path, version: str) -> UserTable:
    """Read one published version folder into a ``UserTable``."""
    path = version_dir / L.USERS_TABLE_FILE
    if not path.exists():
        raise ArtifactError(f"missing {path}: re-run offline_to_online/recall/s1_user_to_redis.py")
    table = pq.read_table(path).sort_by(S.USER_ID)
    userids = table.column(S.USER_ID).to_numpy().astype(np.int64)
    offsets, seen = _list_column(table, L.SEEN, np.int64)
    label_offsets, labels = _list_column(table, L.SEEN_LABELS, np.int8)
    if not np.array_equal(offsets, label_offsets):
        raise ArtifactError(f"{path}: seen and seen_labels are not aligned")
    ratings = None
    if L.SEEN_RATINGS in table.column_names:  # versions published before the ratings have none
        rating_offsets, ratings = _list_column(table, L.SEEN_RATINGS, np.float32)
        if not np.array_equal(offsets, rating_offsets):
            raise ArtifactError(f"{path}: seen and seen_ratings are not aligned")
    terms = [[str(t) for t in ts] if ts else [] for ts in table.column(S.TERMS).to_pylist()]
    arrays = read_npz(version_dir / L.USERS_VECTORS_FILE, (S.VECTOR_IDS, S.VECTORS))
    vector_ids = arrays[S.VECTOR_IDS].astype(np.int64)
    vector_rows = np.full(len(userids), -1, dtype=np.int64)
    pos = np.searchsorted(userids, vector_ids)
    known = (pos < len(userids)) & (userids[np.minimum(pos, len(userids) - 1)] == vector_ids)
    vector_rows[pos[known]] = np.flatnonzero(known)
    vectors = np.ascontiguousarray(arrays[S.VECTORS], dtype=np.float32)
    names = table.column_names
    base = (table.column(L.BASE_EVENT_SEQ).to_numpy().astype(np.int64) if L.BASE_EVENT_SEQ in names
            else np.zeros(len(userids), np.int64))  # versions published before the watermark existed  # fmt: skip
    manifest_path = version_dir / L.MANIFEST_FILE
    tower = read_json(manifest_path).get("vector_tower") if manifest_path.exists() else None
    return UserTable(version, userids, terms, offsets, seen, labels, vector_rows, vectors, base, ratings,
                     None if tower is None else str(tower))  # fmt: skip


class EmbeddedProfileStore:
    """``ProfileStore`` over the embedded user store (``online/users/CURRENT``)."""

    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        store_dir = L.users_store_dir(settings.paths)
        self.table: Refreshing[UserTable] = Refreshing(
            "profile",
            lambda: L.read_current_version(store_dir),
            lambda version: load_user_table(store_dir / version, version),
        )

    def fetch(self, userid: int, timeout_s: float) -> tuple[UserState | None, str]:
        table = self.table.get()
        return table.lookup(userid), table.version

    def maybe_refresh(self) -> None:
        self.table.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.table]

    def status(self) -> ReadyStatus:
        loaded = self.table.loaded
        return ReadyStatus(loaded, self.name, self.table.version, "" if loaded else str(self.table.last_error or ""))

    def close(self) -> None:
        pass
