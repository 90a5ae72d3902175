"""Metrics and slices shared by the offline stages."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from data_exchange_center import schema as S


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), by the rank-sum formula."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def validation_mask(rows: pd.DataFrame, val_fraction: float) -> np.ndarray:
    """True for the last ``val_fraction`` of each user's rows by ``seq`` (at least one row kept for fitting):
    the validation slice at the end of the training period."""
    seq = rows[S.SEQ].to_numpy()
    first = rows.groupby(S.USER_ID, sort=False)[S.SEQ].transform("min").to_numpy()
    n_rows = rows.groupby(S.USER_ID, sort=False)[S.SEQ].transform("size").to_numpy()
    n_fit = np.maximum(np.ceil(n_rows * (1.0 - val_fraction) - 1e-9), 1)
    return (seq - first) >= n_fit
