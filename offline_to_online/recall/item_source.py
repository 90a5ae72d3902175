"""The item side of recall as one checked table: terms, vector, popularity and neighbours per item.

Reads ``preprocess/item_terms.parquet`` (itemid, terms), ``recall/item_vectors.npz`` (ids, vectors),
``recall/popularity.parquet`` (itemid, score) and ``recall/item_neighbors.parquet`` (itemid, neighbor,
weight), checks them against their contracts and each other, and aligns them on the catalogue's item
ids. ``read_item_files`` reads the same four files from any folder (the copies in a version being
published); ``chain_parameters`` are the chain parameters published with them. Also the reference
answers that a published index must reproduce: per-term item counts and the exact
maximum-inner-product neighbour of an item's own vector.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_json, read_npz, read_parquet
from data_exchange_center.chain import RankingPolicy
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
    check_vector_dims(paths)
    return read_item_files(L.ItemFiles.of_artifacts(paths))


def read_item_files(files: L.ItemFiles) -> ItemSource:
    """Read and check four item files (the artifacts, or their copies in a version being published)."""
    terms = read_parquet(files.terms_path, (S.ITEM_ID, S.TERMS))
    vector_ids, vectors = check_vectors(
        read_npz(files.vectors_path, (S.VECTOR_IDS, S.VECTORS)), files.vectors_path.name
    )
    popularity = read_parquet(files.popularity_path, (S.ITEM_ID, S.SCORE))
    neighbors = read_parquet(files.neighbors_path, (S.ITEM_ID, S.NEIGHBOR, S.WEIGHT))
    for frame, name in ((terms, files.terms_path.name), (popularity, files.popularity_path.name)):
        if frame[S.ITEM_ID].duplicated().any():
            raise ArtifactError(f"{name}: duplicate item ids; re-run the stage that wrote it")
    itemids = np.sort(terms[S.ITEM_ID].to_numpy(np.int64))
    require_known(itemids, vector_ids, files.vectors_path.name)
    require_known(itemids, popularity[S.ITEM_ID].to_numpy(np.int64), files.popularity_path.name)
    require_known(itemids, neighbors[S.ITEM_ID].to_numpy(np.int64), files.neighbors_path.name)
    require_known(itemids, neighbors[S.NEIGHBOR].to_numpy(np.int64), files.neighbors_path.name)
    if not np.isfinite(popularity[S.SCORE].to_numpy(np.float64)).all():
        raise ArtifactError(f"{files.popularity_path.name}: scores hold NaN or infinite values")
    return align_items(itemids, terms, vector_ids, vectors, popularity, neighbors)


def chain_parameters(paths: ArtifactPaths) -> dict[str, int | float]:
    """The chain parameters that an item version is published with, from their two files
    (``ArtifactPaths.chain_params_paths``): the trigger policy of item-to-item (``recall/i2i_params.json``)
    and the ranking policy of the report (``rank/ranking_policy.json``).

    Both must be there: a missing ranking policy means the offline run stopped before its report, and
    such a half-finished run is not published. ``prior_weight`` takes the ranking policy's default when absent.
    """
    triggers = read_json(paths.i2i_params_path)
    if not isinstance(triggers, dict) or "max_triggers" not in triggers:
        raise ArtifactError(f"{paths.i2i_params_path} lacks max_triggers: run offline/recall/s3_item_to_item.py")
    if not paths.ranking_policy_path.exists():
        raise ArtifactError(
            f"{paths.ranking_policy_path} is missing (no like_weight): the offline run stopped before "
            "offline/evaluate/s1_topk_report.py (which selects it); run it, then publish"
        )
    require_report_after(paths, [*L.ItemFiles.of_artifacts(paths).all(), paths.i2i_params_path])
    policy = read_json(paths.ranking_policy_path)
    resolved = {"prior_weight": RankingPolicy().prior_weight, **triggers, **policy}
    if "like_weight" not in resolved:
        raise ArtifactError(f"{paths.ranking_policy_path} lacks like_weight: run offline/evaluate/s1_topk_report.py")
    keys = [*L.CHAIN_KEYS, *(k for k in L.CHAIN_OPTIONAL_KEYS if k in resolved)]
    return L.check_chain_parameters({k: resolved[k] for k in keys}, paths.ranking_policy_path)


def require_report_after(paths: ArtifactPaths, inputs: list[Path]) -> None:
    """The report (``rank/ranking_policy.json``, the offline run's last output) is newer than every input of
    the item version: otherwise an offline stage was rerun and the run has not reached its report yet, and
    publishing would mix its new files with the old run's policy."""
    report_time = paths.ranking_policy_path.stat().st_mtime_ns
    newer = [str(p.relative_to(paths.data_dir)) for p in inputs if p.exists() and p.stat().st_mtime_ns > report_time]
    if newer:
        raise ArtifactError(
            f"{', '.join(newer)} changed after {paths.ranking_policy_path.name} was written: the offline run has not "
            "finished (run the remaining stages through offline/evaluate/s1_topk_report.py), then publish"
        )


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
