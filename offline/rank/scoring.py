"""Batch scoring of (user, item) pairs with the exported ONNX ranker.

This is how offline evaluation scores candidates: the serving user features (``rank/user_features``),
the item features, the feature specification and ONNX Runtime, exactly the inputs the online scorer
uses. It needs only numpy, pandas, onnxruntime and ``data_exchange_center`` (no torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from data_exchange_center import chain
from data_exchange_center import model_signature as sig
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import FeatureSpec, combine_features

SCORING_BATCH_SIZE = 65_536  # rows per ONNX Runtime call


def load_session(model: str | Path, n_threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on ``model`` (the model.onnx file, or the folder holding it)."""
    onnx_path = Path(model)
    if onnx_path.is_dir():
        onnx_path = onnx_path / "model.onnx"
    if not onnx_path.exists():
        raise ArtifactError(f"missing ONNX model {onnx_path}: run offline/rank/s2_model_train.py first")
    options = ort.SessionOptions()
    if n_threads:
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def score_encoded(
    session: ort.InferenceSession, sparse: np.ndarray, dense: np.ndarray, batch_size: int = SCORING_BATCH_SIZE
) -> np.ndarray:
    """Scores (n,) float32 of encoded rows: sparse int64 (n, n_sparse), dense float32 (n, n_dense)."""
    scores = np.empty(len(sparse), dtype=np.float32)
    for start in range(0, len(sparse), batch_size):
        stop = start + batch_size
        (out,) = session.run([sig.OUTPUT_SCORE], sig.ranker_inputs(sparse[start:stop], dense[start:stop]))  # (batch, 1)
        scores[start:stop] = out[:, 0]
    return scores


def score_pairs(
    model: str | Path | ort.InferenceSession,
    spec: FeatureSpec,
    user_features: pd.DataFrame,
    item_features: pd.DataFrame,
    userids: np.ndarray | pd.Series | list[int],
    itemids: np.ndarray | pd.Series | list[int],
    batch_size: int = SCORING_BATCH_SIZE,
    evidence: np.ndarray | None = None,
    user_dense: np.ndarray | None = None,
) -> np.ndarray:
    """The ranker's score of each pair ``(userids[i], itemids[i])``: float32 (n,); ``evidence`` (n, m) is
    each pair's recall evidence (``chain.candidate_evidence``) for a ranker that reads it; ``user_dense``
    (n, m_u), when given, replaces the encoded user dense part of each pair (a user's history features
    after live events, ``data_exchange_center.user_history``).

    ``model`` is an ONNX Runtime session, a model.onnx path or the model folder. User and item tables
    are encoded once with the spec; every id must have a row in its table (``ValueError`` otherwise).
    """
    session = model if isinstance(model, ort.InferenceSession) else load_session(model)
    user_rows = _row_positions(user_features, S.USER_ID, np.asarray(userids), "user")
    item_rows = _row_positions(item_features, S.ITEM_ID, np.asarray(itemids), "item")
    if len(user_rows) != len(item_rows):
        raise ValueError(f"{len(user_rows)} user ids but {len(item_rows)} item ids: pairs must align")
    user_sparse, table_dense = spec.encode_users(user_features)  # (n_users, k_u), (n_users, m_u)
    item_sparse, item_dense = spec.encode_items(item_features)  # (n_items, k_i), (n_items, m_i)
    scores = np.empty(len(user_rows), dtype=np.float32)
    for start in range(0, len(user_rows), batch_size):
        users = user_rows[start : start + batch_size]
        items = item_rows[start : start + batch_size]
        part = evidence[start : start + batch_size] if evidence is not None else None
        users_dense = user_dense[start : start + batch_size] if user_dense is not None else table_dense[users]
        sparse, dense = combine_features(
            (user_sparse[users], users_dense), (item_sparse[items], item_dense[items]),
            spec.evidence(part, len(users)),
        )
        scores[start : start + len(users)] = score_encoded(session, sparse, dense, batch_size)
    return scores


def score_candidates(
    model: str | Path | ort.InferenceSession,
    spec: FeatureSpec,
    user_features: pd.DataFrame,
    item_features: pd.DataFrame,
    userids: np.ndarray,
    candidates: list[chain.Candidates],
    user_dense: list[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """The ranker's score of every candidate of every user (``userids[i]``'s ``candidates[i]``), with the
    candidates' recall evidence, in one batch for all users: one (n_i,) array per user. ``user_dense[i]``
    (1, m_u), where not None, replaces user i's encoded dense features (history after live events)."""
    sizes = [len(c.items) for c in candidates]
    if not sum(sizes):
        return [np.zeros(0, np.float32) for _ in candidates]
    evidence = np.concatenate([chain.candidate_evidence(c) for c in candidates]) if spec.n_evidence else None
    pair_dense = None
    if user_dense is not None and any(d is not None for d in user_dense):
        rows = _row_positions(user_features, S.USER_ID, np.asarray(userids), "user")
        table_dense = spec.encode_users(user_features)[1]
        per_user = [table_dense[r : r + 1] if d is None else d for r, d in zip(rows, user_dense, strict=True)]
        pair_dense = np.repeat(np.concatenate(per_user), sizes, axis=0)  # (n_pairs, m_u)
    scores = score_pairs(model, spec, user_features, item_features, np.repeat(userids, sizes),
                         np.concatenate([c.items for c in candidates]), evidence=evidence,
                         user_dense=pair_dense)  # fmt: skip
    return np.split(scores, np.cumsum(sizes)[:-1])


def _row_positions(table: pd.DataFrame, id_column: str, ids: np.ndarray, what: str) -> np.ndarray:
    if table[id_column].duplicated().any():
        raise ValueError(f"the {what} feature table has duplicate {id_column} values")
    positions = pd.Index(table[id_column]).get_indexer(ids)
    if (positions < 0).any():
        unknown = np.unique(ids[positions < 0])
        raise ValueError(f"{len(unknown)} {what} ids have no feature row (e.g. {unknown[:5].tolist()})")
    return positions
