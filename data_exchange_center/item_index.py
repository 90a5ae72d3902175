"""The in-process item index: exact term, vector, neighbour and popularity look-ups over the artifacts.

It answers the same questions as the Elasticsearch index (``offline_to_online/recall/s2_item_to_es``)
with exact search. The embedded profile serves from it, the online service falls back to it when
Elasticsearch is down, and the offline evaluation uses it, so all three see the same candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_npz, read_parquet
from data_exchange_center.online_layout import ItemFiles
from data_exchange_center.paths import ArtifactPaths

Ranked = tuple[np.ndarray, np.ndarray]  # (items int64, scores float32), best first


DENSE_ID_LIMIT = 1 << 21  # ids below this are looked up in a flag table (at most 2 MiB per call)


def dense_ids(*arrays: np.ndarray, limit: int = DENSE_ID_LIMIT) -> int | None:
    """One past the largest id when every id in ``arrays`` is in ``[0, limit)`` (a dense table of that
    size is cheaper than sorting), else None."""
    present = [a for a in arrays if len(a)]
    if not present:
        return 1
    low = min(int(a.min()) for a in present)
    high = max(int(a.max()) for a in present)
    return high + 1 if low >= 0 and high < limit else None


def not_in(items: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """(len(items),) bool: the items that are not in ``exclude`` (``~np.isin``, a flag table for small ids)."""
    size = dense_ids(items, exclude)
    if size is None:
        return ~np.isin(items, exclude)
    flags = np.zeros(size, dtype=bool)
    flags[exclude] = True
    return ~flags[items]


def top_k(items: np.ndarray, scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> Ranked:
    """The ``k`` best (item, score) pairs by score (ties by item id), leaving out ``exclude``."""
    if exclude is not None and len(exclude):
        keep = not_in(items, exclude)
        items, scores = items[keep], scores[keep]
    if k <= 0 or len(items) == 0:
        return items[:0], scores[:0]
    if len(items) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        items, scores = items[part], scores[part]
    order = np.lexsort((items, -scores))
    return items[order], scores[order]


@dataclass(frozen=True)
class ItemIndex:
    item_ids: np.ndarray  # (n_items,) int64, sorted
    popularity: np.ndarray  # (n_items,) float32
    term_names: list[str]  # the genre vocabulary
    term_flags: np.ndarray  # (n_items, n_terms) bool
    vector_ids: np.ndarray  # (n_vec,) int64
    vectors: np.ndarray  # (n_vec, dim) float32
    neighbor_items: np.ndarray  # (n_items, n_neighbors) int64, -1 padded, aligned with item_ids
    neighbor_weights: np.ndarray  # (n_items, n_neighbors) float32

    @classmethod
    def load(cls, paths: ArtifactPaths, with_vectors: bool = True, with_neighbors: bool = True) -> ItemIndex:
        """The index over the offline artifacts; the offline recall stages that run before the vector or
        neighbour artifacts exist load it without them (their searches then return nothing)."""
        return cls.from_files(ItemFiles.of_artifacts(paths), with_vectors, with_neighbors)

    @classmethod
    def from_files(cls, files: ItemFiles, with_vectors: bool = True, with_neighbors: bool = True) -> ItemIndex:
        """The index over four item files: the offline artifacts, or the copies in a published version."""
        terms = read_parquet(files.terms_path, (S.ITEM_ID, S.TERMS))
        item_ids = np.sort(terms[S.ITEM_ID].to_numpy(np.int64))
        terms = terms.set_index(S.ITEM_ID).loc[item_ids]
        popularity = read_parquet(files.popularity_path, (S.ITEM_ID, S.SCORE)).set_index(S.ITEM_ID)[S.SCORE]
        term_names = sorted({t for ts in terms[S.TERMS] for t in ts})
        exploded = terms[S.TERMS].explode().dropna()
        flags = np.zeros((len(item_ids), len(term_names)), dtype=bool)
        flags[np.searchsorted(item_ids, exploded.index.to_numpy()), pd.Index(term_names).get_indexer(exploded)] = True
        if with_vectors:
            vectors = read_npz(files.vectors_path, (S.VECTOR_IDS, S.VECTORS))
        else:
            vectors = {S.VECTOR_IDS: np.zeros(0, np.int64), S.VECTORS: np.zeros((0, 1), np.float32)}
        if with_neighbors:
            neighbors = read_parquet(files.neighbors_path, (S.ITEM_ID, S.NEIGHBOR, S.WEIGHT))
        else:
            neighbors = pd.DataFrame({S.ITEM_ID: [], S.NEIGHBOR: [], S.WEIGHT: []})
        nbr_items, nbr_weights = neighbor_matrix(neighbors, item_ids)
        return cls(
            item_ids=item_ids,
            popularity=popularity.reindex(item_ids, fill_value=0.0).to_numpy(np.float32),
            term_names=term_names,
            term_flags=flags,
            vector_ids=vectors[S.VECTOR_IDS].astype(np.int64),
            vectors=vectors[S.VECTORS].astype(np.float32),
            neighbor_items=nbr_items,
            neighbor_weights=nbr_weights,
        )

    def search_popular(self, k: int, exclude: np.ndarray | None = None) -> Ranked:
        return top_k(self.item_ids, self.popularity, k, exclude)

    def search_terms(self, terms: list[str], k: int, exclude: np.ndarray | None = None) -> Ranked:
        """Items carrying any of ``terms``, by number of matching terms, then popularity."""
        cols = [self.term_names.index(t) for t in terms if t in self.term_names]
        if not cols:
            return self.item_ids[:0], self.popularity[:0]
        n_match = self.term_flags[:, cols].sum(axis=1)
        hit = n_match > 0
        score = n_match[hit] * 1e9 + self.popularity[hit]  # matches first, popularity breaks ties
        items, ranked = top_k(self.item_ids[hit], score.astype(np.float64), k, exclude)
        return items, (ranked % 1e9).astype(np.float32)

    def search_vector(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None) -> Ranked:
        """Exact maximum-inner-product search."""
        scores = self.vectors @ query.astype(np.float32)  # (n_vec,)
        return top_k(self.vector_ids, scores, k, exclude)

    def neighbors_of(self, items: np.ndarray) -> Ranked:
        """Neighbour ids and weights of ``items``: (len(items), n_neighbors), unknown items all padding."""
        pos = np.searchsorted(self.item_ids, items)
        pos = np.minimum(pos, len(self.item_ids) - 1)
        known = self.item_ids[pos] == items
        nbr, weights = self.neighbor_items[pos], self.neighbor_weights[pos]  # copies (fancy indexing)
        nbr[~known] = -1
        weights[~known] = 0.0
        return nbr, weights


def neighbor_matrix(neighbors: pd.DataFrame, item_ids: np.ndarray) -> Ranked:
    """The long neighbour table as two (n_items, max_neighbors) matrices aligned with ``item_ids``."""
    neighbors = neighbors.sort_values([S.ITEM_ID, S.WEIGHT], ascending=[True, False], kind="stable")
    row = np.searchsorted(item_ids, neighbors[S.ITEM_ID].to_numpy())
    rank = neighbors.groupby(S.ITEM_ID).cumcount().to_numpy()
    width = int(rank.max()) + 1 if len(rank) else 1
    items = np.full((len(item_ids), width), -1, dtype=np.int64)
    weights = np.zeros((len(item_ids), width), dtype=np.float32)
    items[row, rank] = neighbors[S.NEIGHBOR].to_numpy()
    weights[row, rank] = neighbors[S.WEIGHT].to_numpy()
    return items, weights
