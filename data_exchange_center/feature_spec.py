"""The ranking feature specification: one artifact that every stage after feature engineering reads.

A feature row is assembled from a user part and an item part, in this fixed order::

    sparse = [user categorical fields..., item categorical fields...]   int64   (n, n_sparse)
    dense  = [user dense fields..., item dense fields..., candidate fields...]   float32 (n, n_dense)

The candidate fields (source ``candidate``, ``chain.EVIDENCE_FIELDS``) are the recall evidence of the
candidate that the row scores: computed per request from the candidates, never stored in a feature
store; a spec without them scores user and item features only.

Categorical values are encoded as their 1-based position in the field's vocabulary; 0 means unknown
(a user or item that was not in the training data). Dense values are standardized with training
statistics when ``normalize`` is set (point-in-time counts) and passed through otherwise (genre flags).
Training (``offline/rank``) and serving (``online``) both call ``encode_users``, ``encode_items`` and
``combine_features`` below, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from data_exchange_center.artifacts import ArtifactError, read_json, write_json

Source = Literal["user", "item", "candidate"]
SPEC_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CategoricalField:
    name: str
    source: Source
    vocab: list[Any]

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including index 0 for unknown values."""
        return len(self.vocab) + 1


@dataclass(frozen=True)
class DenseField:
    name: str
    source: Source
    mean: float = 0.0
    std: float = 1.0
    normalize: bool = True

    def encode(self, raw: Any) -> Any:
        """Raw values (float64 array or scalar) as the model reads them: standardized, or passed through."""
        return (raw - self.mean) / self.std if self.normalize else raw


@dataclass(frozen=True)
class FeatureSpec:
    dataset: str
    categorical: list[CategoricalField]
    dense: list[DenseField]
    genres: list[str] = field(default_factory=list)
    format_version: int = SPEC_FORMAT_VERSION

    # --- shape ---------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.categorical) + len(self.dense)

    @property
    def columns(self) -> list[str]:
        """All feature columns in model order: sparse fields then dense fields."""
        return [f.name for f in self.categorical] + [f.name for f in self.dense]

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.categorical]

    def fields_of(self, source: Source) -> tuple[list[CategoricalField], list[DenseField]]:
        return (
            [f for f in self.categorical if f.source == source],
            [f for f in self.dense if f.source == source],
        )

    def source_columns(self, source: Source) -> list[str]:
        cats, dense = self.fields_of(source)
        return [f.name for f in cats] + [f.name for f in dense]

    @property
    def row_columns(self) -> list[str]:
        """The columns a feature row holds: the user's and the item's (not the per-request evidence)."""
        return self.source_columns("user") + self.source_columns("item")

    @property
    def n_evidence(self) -> int:
        """How many candidate (recall evidence) fields end the dense inputs."""
        return len(self.fields_of("candidate")[1])

    def evidence(self, values: np.ndarray | None, n: int) -> np.ndarray | None:
        """The candidate part of ``n`` rows, (n, n_evidence) float32: ``values`` (checked), zeros when
        ``values`` is None (rows scored outside the chain, e.g. rated items); None for a spec without it."""
        if not self.n_evidence:
            return None
        if values is None:
            return np.zeros((n, self.n_evidence), dtype=np.float32)
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (n, self.n_evidence):
            raise ValueError(f"evidence of shape {values.shape}, the spec wants {(n, self.n_evidence)}")
        return values

    def reference_evidence(self, positions: np.ndarray) -> np.ndarray | None:
        """The evidence of the offline == online check's reference rows (test rows at ``positions``): fixed
        pseudo-random values in [0, 1) per row position (seed 0), so that the check covers the weights that
        read the evidence. None for a spec without evidence."""
        if not self.n_evidence:
            return None
        positions = np.asarray(positions, dtype=np.int64)
        table = np.random.default_rng(0).random((int(positions.max(initial=-1)) + 1, self.n_evidence))
        return table[positions].astype(np.float32)

    # --- encoding ------------------------------------------------------------------------------
    def encode(self, df: pd.DataFrame, source: Source) -> tuple[np.ndarray, np.ndarray]:
        """Encode the ``source`` part of feature rows: ``(sparse int64 (n, k), dense float32 (n, m))``."""
        cats, dense = self.fields_of(source)
        missing = [c for c in self.source_columns(source) if c not in df.columns]
        if missing:
            raise ArtifactError(f"{source} feature rows lack columns {missing} required by the feature spec")
        sparse = np.zeros((len(df), len(cats)), dtype=np.int64)
        for j, cat in enumerate(cats):
            sparse[:, j] = pd.Index(cat.vocab).get_indexer(df[cat.name].to_numpy()) + 1
        values = np.zeros((len(df), len(dense)), dtype=np.float32)
        for j, den in enumerate(dense):
            values[:, j] = den.encode(df[den.name].to_numpy(dtype=np.float64, na_value=0.0))
        return sparse, values

    def encode_dense_row(self, source: Source, values: dict[str, float]) -> np.ndarray:
        """The dense part of one ``source`` row from raw values by field name: (1, m) float32, as ``encode``."""
        dense = self.fields_of(source)[1]
        missing = [f.name for f in dense if f.name not in values]
        if missing:
            raise ArtifactError(f"{source} values lack {missing} required by the feature spec")
        raw = np.array([values[f.name] for f in dense], dtype=np.float64)
        return np.array([[f.encode(v) for f, v in zip(dense, raw, strict=True)]], dtype=np.float32)

    def encode_users(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return self.encode(df, "user")

    def encode_items(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return self.encode(df, "item")

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = self.columns
        out["n_features"] = self.n_features
        out["vocab_sizes"] = self.vocab_sizes
        return out

    def save(self, path: Path) -> Path:
        return write_json(self.to_dict(), path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureSpec:
        if raw.get("format_version") != SPEC_FORMAT_VERSION:
            raise ArtifactError(
                f"feature spec format {raw.get('format_version')} is not {SPEC_FORMAT_VERSION}: "
                "re-run offline/rank/s1_feature_engi.py"
            )
        return cls(
            dataset=raw["dataset"],
            categorical=[CategoricalField(**f) for f in raw["categorical"]],
            dense=[DenseField(**f) for f in raw["dense"]],
            genres=list(raw.get("genres", [])),
        )

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.from_dict(read_json(path))


def combine_features(
    user_part: tuple[np.ndarray, np.ndarray],
    item_part: tuple[np.ndarray, np.ndarray],
    evidence: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Join encoded user and item parts (and the candidates' evidence, ``FeatureSpec.evidence``) into model
    inputs; a single user row broadcasts over items."""
    user_sparse, user_dense = user_part
    item_sparse, item_dense = item_part
    n = max(len(user_sparse), len(item_sparse))
    if len(user_sparse) == 1 and n > 1:
        user_sparse = np.broadcast_to(user_sparse, (n, user_sparse.shape[1]))
        user_dense = np.broadcast_to(user_dense, (n, user_dense.shape[1]))
    if len(user_sparse) != len(item_sparse):
        raise ValueError(f"user rows ({len(user_sparse)}) and item rows ({len(item_sparse)}) do not align")
    sparse = np.concatenate([user_sparse, item_sparse], axis=1)  # (n, n_sparse)
    parts = [user_dense, item_dense] if evidence is None else [user_dense, item_dense, evidence]
    dense = np.concatenate(parts, axis=1).astype(np.float32, copy=False)  # (n, n_dense)
    return sparse, dense


def encode_recent_items(
    seen: np.ndarray, seen_labels: np.ndarray, vocab_ids: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """The vector model's user-side inputs from a user's seen items (time order) and their labels.

    ``vocab_ids`` are the item ids in vocabulary order (sorted; position + 1 is the model's index, 0 is
    padding and unknown items). Returns ``recent_items`` int64 (1, window) and ``recent_liked`` float32
    (1, window): the last ``window`` seen items, oldest first, left padded with 0.
    """
    seen = np.asarray(seen, dtype=np.int64)[-window:] if window > 0 else np.zeros(0, np.int64)
    labels = np.asarray(seen_labels)[len(seen_labels) - len(seen) :]
    items = np.zeros((1, window), dtype=np.int64)
    liked = np.zeros((1, window), dtype=np.float32)
    if len(seen):
        pos = np.minimum(np.searchsorted(vocab_ids, seen), max(len(vocab_ids) - 1, 0))
        known = vocab_ids[pos] == seen if len(vocab_ids) else np.zeros(len(seen), dtype=bool)
        items[0, window - len(seen) :] = np.where(known, pos + 1, 0)
        liked[0, window - len(seen) :] = (labels > 0).astype(np.float32)
    return items, liked
