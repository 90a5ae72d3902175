"""The vector model's user side at request time: the user tower of the live item version.

The tower belongs to the item version (``online/items/<version>/user_tower.onnx`` and ``.json``,
published with the item vectors it was trained with; its vocabulary is that version's
``item_vectors.npz`` ids), so a user vector always meets the item vectors it was made for.
``UserTowers`` follows ``online/items/CURRENT`` like the in-process index (a ``Refreshing`` snapshot
loaded in the background, files checked against the version's manifest). A request encodes the user's
recent items with ``data_exchange_center.feature_spec.encode_recent_items`` (the encoding the offline
stage and evaluation use) and the scorer role runs the tower: ONNX Runtime on this snapshot's session
(embedded, and the compose fallback), or Triton's ``ml_user_tower`` at the version number the item
version names (compose).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_exchange_center import model_signature as sig
from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_npz, sha256_of
from data_exchange_center.chain import UserState
from data_exchange_center.feature_spec import encode_recent_items
from data_exchange_center.settings import Settings
from online.backends.base import ReadyStatus
from online.backends.onnx_scorer import load_session
from online.backends.versions import NotLoaded, Refreshing


@dataclass(frozen=True)
class UserTower:
    """One item version's user tower: how to encode a user and the in-process session."""

    item_version: str
    args: L.UserTowerArgs
    vocab_ids: np.ndarray  # (n_items,) int64 sorted: the item vectors' ids
    session: Any  # onnxruntime.InferenceSession
    sha256: str  # of the tower file (the version's manifest): a user state whose vector it made needs no run

    def made(self, state: UserState) -> bool:
        """Whether ``state.vector`` is this tower's output for ``state``'s history (published by the
        users stage, no live events since): running the tower again would give the same vector."""
        return state.vector is not None and state.vector_tower == self.sha256

    def encode(self, state: UserState) -> tuple[np.ndarray, np.ndarray]:
        """``recent_items`` (1, window) int64 and ``recent_liked`` (1, window) float32 of ``state``."""
        return encode_recent_items(state.seen, state.seen_labels, self.vocab_ids, self.args.window)

    def run(self, items: np.ndarray, liked: np.ndarray) -> np.ndarray:
        """``[u, 1]`` (batch, dim) float32 by ONNX Runtime in process."""
        return np.asarray(self.session.run([sig.USER_TOWER_OUTPUT], sig.tower_inputs(items, liked))[0], np.float32)


@dataclass(frozen=True)
class TowerSnapshot:
    item_version: str
    tower: UserTower | None  # None: the item version has no user tower (the published user vectors serve)


def load_tower(store_dir: Path, item_version: str) -> TowerSnapshot:
    """The tower of one published item version (after checking its files against the manifest)."""
    version_dir = store_dir / item_version
    manifest = L.verify_version_files(version_dir)
    args = L.read_user_tower_args(version_dir)
    if args is None:
        return TowerSnapshot(item_version, None)
    vocab = read_npz(version_dir / L.ITEM_VECTORS_FILE, (S.VECTOR_IDS,))[S.VECTOR_IDS].astype(np.int64)
    session = load_session(version_dir / L.USER_TOWER_FILE)
    listed: Any = manifest.get("files", {}).get(L.USER_TOWER_FILE)  # type: ignore[attr-defined]
    digest = str(listed["sha256"]) if listed else sha256_of(version_dir / L.USER_TOWER_FILE)  # checked above
    return TowerSnapshot(item_version, UserTower(item_version, args, vocab, session, digest))


class UserTowers:
    """The live item version's user tower (``Lifecycle``; not a role of its own: the scorer runs it)."""

    name = "user_tower"

    def __init__(self, settings: Settings) -> None:
        store_dir = L.items_store_dir(settings.paths)
        self.snapshot: Refreshing[TowerSnapshot] = Refreshing(
            "user_tower", lambda: L.read_current_version(store_dir), lambda version: load_tower(store_dir, version)
        )

    def tower_for(self, item_version: str) -> UserTower | None:
        """The tower paired with ``item_version`` (None when not loaded, switching, or never published)."""
        try:
            snapshot = self.snapshot.get()
        except NotLoaded:
            return None  # not an error: the user's published vector serves meanwhile
        return snapshot.tower if snapshot.item_version == item_version else None

    def maybe_refresh(self) -> None:
        self.snapshot.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.snapshot]

    def status(self) -> ReadyStatus:
        loaded = self.snapshot.loaded
        return ReadyStatus(loaded, self.name, self.snapshot.version, "" if loaded else str(self.snapshot.last_error))

    def close(self) -> None:
        pass
