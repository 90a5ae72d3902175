"""Encoded feature tables and a per-row encoder: what the feature-store adapters cache and look up.

``EncodedTable`` holds rows already encoded with the feature spec (``FeatureSpec.encode``), indexed by
sorted entity id: a look-up is a binary search and a gather. ``RowEncoder`` encodes one entity's raw
feature values (a dict from a feature server's reply) without pandas, with the same arithmetic as
``FeatureSpec.encode`` (tests compare the two on every row of a table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data_exchange_center.feature_spec import FeatureSpec, Source
from online.backends.base import Encoded


def default_row(spec: FeatureSpec, source: Source) -> Encoded:
    """The encoding of an entity without features: unknown categories (0) and missing dense values (0)."""
    frame = pd.DataFrame({c: pd.Series([None], dtype=object) for c in spec.source_columns(source)})
    return spec.encode(frame, source)


@dataclass(frozen=True)
class EncodedTable:
    ids: np.ndarray  # (n,) int64, sorted
    sparse: np.ndarray  # (n, k) int64
    dense: np.ndarray  # (n, m) float32
    default: Encoded  # (1, k), (1, m)

    @classmethod
    def from_frame(cls, spec: FeatureSpec, source: Source, frame: pd.DataFrame, id_column: str) -> EncodedTable:
        frame = frame.sort_values(id_column, kind="stable").reset_index(drop=True)
        sparse, dense = spec.encode(frame, source)
        ids = frame[id_column].to_numpy(np.int64)
        return cls(ids, sparse, np.ascontiguousarray(dense, np.float32), default_row(spec, source))

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of ``ids`` and a mask of the ids that have a row."""
        if len(self.ids) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return pos, self.ids[pos] == ids

    def rows(self, ids: np.ndarray) -> Encoded:
        """Encoded rows of ``ids`` (n,), the default row where an id has none."""
        pos, known = self.positions(np.asarray(ids, dtype=np.int64))
        sparse, dense = self.sparse[pos], self.dense[pos]
        if not known.all():
            sparse[~known], dense[~known] = self.default[0][0], self.default[1][0]
        return sparse, dense

    def row(self, entity_id: int) -> Encoded | None:
        pos, known = self.positions(np.array([entity_id], dtype=np.int64))
        if not known[0]:
            return None
        return self.sparse[pos], self.dense[pos]


class RowEncoder:
    """Encodes one entity's feature values like ``FeatureSpec.encode`` does, with dicts and numpy only."""

    def __init__(self, spec: FeatureSpec, source: Source) -> None:
        cats, dense = spec.fields_of(source)
        self.categorical = [(f.name, {v: i + 1 for i, v in enumerate(f.vocab)}) for f in cats]
        self.dense_names = [f.name for f in dense]
        self.mean = np.array([f.mean if f.normalize else 0.0 for f in dense], np.float64)
        self.std = np.array([f.std if f.normalize else 1.0 for f in dense], np.float64)

    def encode(self, values: Mapping[str, Any]) -> Encoded:
        """``values`` maps a feature name to its raw value (None or absent when missing)."""
        sparse = np.array([[vocab.get(_hashable(values.get(name)), 0) for name, vocab in self.categorical]], np.int64)
        raw = np.array([values.get(name) for name in self.dense_names], np.float64)  # None -> NaN
        raw[np.isnan(raw)] = 0.0  # missing -> 0, as FeatureSpec.encode fills it
        return sparse, ((raw - self.mean) / self.std).astype(np.float32)[None, :]


def _hashable(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # pandas' Index matches 18.0 with the vocabulary's 18
    return value
