"""The item side of recall as one checked table: terms, vector, popularity and neighbours per item.

Reads ``preprocess/item_terms.parquet`` (itemid, terms), ``recall/item_vectors.npz`` (ids, vectors),
``recall/popularity.parquet`` (itemid, score) and ``recall/item_neighbors.parquet`` (itemid, neighbor,
weight), checks them against their contracts and each other, and aligns them on the catalogue's item
ids. Also the reference answers that a published index must reproduce: per-term item counts and the
exact maximum-inner-product neighbour of an item's own vector.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_npz, read_parquet
from data_exchange_center.paths import ArtifactPaths
from offline_to_online.recall.user_source import check_vector_dims, check_vectors

TIE_TOLERANCE = 1e-5  # inner products this close to the best one count as the best


@dataclass(frozen=True)
class ItemSource:
    """Per-item recall inputs aligned on ``itemids`` (the catalogue, sorted)."""

    itemids: np.ndarray  # (n_items,) int64
    terms: list[list[str]]  # (n_items,)
    vector_rows: np.ndarray  # (n_items,) int64 row of ``vectors``, -1 when the item has no vector
    vectors: np.ndarray  # (n_vectors, dim) float32, rows aligned with ``vector_ids``
    vector_ids: np.ndarray  # (n_vectors,) int64
    popularity: np.ndarray  # (n_items,) float32, 0 for items without a score
    neighbors: list[np.ndarray]  # (n_items,) int64 neighbour ids, weight descending
    neighbor_weights: list[np.ndarray]  # (n_items,) float32

    @property
    def n_items(self) -> int:
        return len(self.itemids)

    @property
    def vector_dim(self) -> int:
        return int(self.vectors.shape[1])

    def term_counts(self) -> dict[str, int]:
        """Items per term: what a term query must count."""
        return dict(sorted(Counter(t for terms in self.terms for t in set(terms)).items()))

    def best_inner_product_items(self, vector: np.ndarray) -> set[int]:
        """Item ids whose inner product with ``vector`` is the maximum (within ``TIE_TOLERANCE``)."""
        scores = self.vectors @ vector.astype(np.float32)  # (n_vectors,)
        return set(self.vector_ids[scores >= scores.max() - TIE_TOLERANCE].tolist())


def load_item_source(paths: ArtifactPaths) -> ItemSource:
    """Read and check the four item artifacts; ``ArtifactError`` names the file and the problem."""
    terms = read_parquet(paths.item_terms_path, (S.ITEM_ID, S.TERMS))
    vector_ids, vectors = check_vectors(
        read_npz(paths.item_vectors_path, (S.VECTOR_IDS, S.VECTORS)), paths.item_vectors_path.name
    )
    check_vector_dims(paths)
    popularity = read_parquet(paths.popularity_path, (S.ITEM_ID, S.SCORE))
    neighbors = read_parquet(paths.item_neighbors_path, (S.ITEM_ID, S.NEIGHBOR, S.WEIGHT))
    for frame, name in ((terms, paths.item_terms_path.name), (popularity, paths.popularity_path.name)):
        if frame[S.ITEM_ID].duplicated().any():
            raise ArtifactError(f"{name}: duplicate item ids; re-run the stage that wrote it")
    itemids = np.sort(terms[S.ITEM_ID].to_numpy(np.int64))
    require_known(itemids, vector_ids, paths.item_vectors_path.name)
    require_known(itemids, popularity[S.ITEM_ID].to_numpy(np.int64), paths.popularity_path.name)
    require_known(itemids, neighbors[S.ITEM_ID].to_numpy(np.int64), paths.item_neighbors_path.name)
    require_known(itemids, neighbors[S.NEIGHBOR].to_numpy(np.int64), paths.item_neighbors_path.name)
    if not np.isfinite(popularity[S.SCORE].to_numpy(np.float64)).all():
        raise ArtifactError(f"{paths.popularity_path.name}: scores hold NaN or infinite values")
    return align_items(itemids, terms, vector_ids, vectors, popularity, neighbors)


def require_known(catalogue: np.ndarray, ids: np.ndarray, name: str) -> None:
    unknown = np.setdiff1d(ids, catalogue)
    if len(unknown):
        raise ArtifactError(
            f"{name}: {len(unknown)} item ids are not in item_terms.parquet (e.g. {unknown[:5].tolist()}): "
            "the recall and preprocess artifacts come from different runs"
        )


def align_items(
    itemids: np.ndarray,
    terms: pd.DataFrame,
    vector_ids: np.ndarray,
    vectors: np.ndarray,
    popularity: pd.DataFrame,
    neighbors: pd.DataFrame,
) -> ItemSource:
    index = pd.Index(itemids)
    aligned_terms: list[list[str]] = [[] for _ in range(len(itemids))]
    for pos, item_terms in zip(index.get_indexer(terms[S.ITEM_ID]), terms[S.TERMS], strict=True):
        aligned_terms[pos] = [] if item_terms is None else [str(t) for t in item_terms]
    vector_rows = np.full(len(itemids), -1, dtype=np.int64)
    vector_rows[index.get_indexer(vector_ids)] = np.arange(len(vector_ids))
    scores = np.zeros(len(itemids), dtype=np.float32)
    scores[index.get_indexer(popularity[S.ITEM_ID])] = popularity[S.SCORE].to_numpy(np.float32)
    ordered = neighbors.sort_values([S.ITEM_ID, S.WEIGHT], ascending=[True, False], kind="stable")
    nbr_ids: list[np.ndarray] = [np.zeros(0, np.int64)] * len(itemids)
    nbr_weights: list[np.ndarray] = [np.zeros(0, np.float32)] * len(itemids)
    owner = ordered[S.ITEM_ID].to_numpy(np.int64)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, np.int64)
    id_groups = np.split(ordered[S.NEIGHBOR].to_numpy(np.int64), starts[1:])
    weight_groups = np.split(ordered[S.WEIGHT].to_numpy(np.float32), starts[1:])
    for pos, ids, weights in zip(index.get_indexer(owner[starts]), id_groups, weight_groups, strict=False):
        nbr_ids[pos], nbr_weights[pos] = ids, weights
    return ItemSource(itemids, aligned_terms, vector_rows, vectors, vector_ids, scores, nbr_ids, nbr_weights)
