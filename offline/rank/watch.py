"""The ranker's watch head, trained on the recall candidates it will rank (``offline/rank/candidates.py``).

After the like head is trained on the rated items, the shared part of the DeepFM (embeddings, FM
interactions, like head) is frozen and its outputs for every candidate row are computed once; the watch
head (a small MLP over those outputs and the candidate's recall evidence) is then fitted to predict
whether the user watched the candidate next, on the candidates of half of the validation users. Each
epoch, the other half's users are ranked by ``p_watch * p_like ** w`` for every ``w`` of the grid and
scored by NDCG@k against their test-split positives; the best (epoch, w) is kept, and ``w`` becomes the
model's ``like_weight`` (the exported ONNX computes the served score with it).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from data_exchange_center import chain
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.topk_metrics import topk_metrics
from offline.common.holdout import TOPK
from offline.rank.candidates import CandidateSets, is_fit_user
from offline.rank.deepfm import DeepFM
from offline.rank.train import TrainConfig

log = logging.getLogger(__name__)
MIN_STEPS_PER_EPOCH = 100  # small data: smaller batches, so that an epoch still takes this many steps
MIN_WATCH_BATCH = 128


@dataclass
class WatchResult:
    best_epoch: int
    like_weight: float
    selection: list[dict[str, float]] = field(default_factory=list)  # per epoch and like weight
    n_fit_users: int = 0
    n_fit_rows: int = 0
    n_selection_users: int = 0
    train_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        best = max(self.selection, key=lambda r: r["ndcg"]) if self.selection else {}
        return {
            "best_epoch": self.best_epoch,
            "like_weight": self.like_weight,
            "selection_recall": best.get("recall"),
            "selection_ndcg": best.get("ndcg"),
            "n_fit_users": self.n_fit_users,
            "n_fit_rows": self.n_fit_rows,
            "n_selection_users": self.n_selection_users,
            "train_seconds": round(self.train_seconds, 1),
        }


@torch.no_grad()
def frozen_inputs(model: DeepFM, sparse: np.ndarray, dense: np.ndarray, batch_size: int = 65_536) -> torch.Tensor:
    """The watch head's inputs of every row (the frozen shared part's outputs and the evidence)."""
    model.eval()
    parts = [
        model.watch_inputs(torch.from_numpy(sparse[i : i + batch_size]), torch.from_numpy(dense[i : i + batch_size]))
        for i in range(0, len(sparse), batch_size)
    ]
    return torch.cat(parts)


def sample_users(sets: CandidateSets, max_users: int, seed: int) -> CandidateSets:
    """At most ``max_users`` users (a seeded sample): the candidate rows stay bounded on large data."""
    if len(sets.target_users) <= max_users:
        return sets
    keep = np.zeros(len(sets.target_users), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(keep), max_users, replace=False)] = True
    return sets.subset(keep)


def train_watch_head(
    model: DeepFM, sets: CandidateSets, spec: FeatureSpec, item_features: pd.DataFrame, config: TrainConfig,
    progress: bool = True, k: int = TOPK,
) -> WatchResult:  # fmt: skip
    """Fit ``model``'s watch head in place and set its ``like_weight``; returns how it was selected
    (``config``'s ``watch_*`` fields)."""
    started = time.perf_counter()
    sets = sample_users(sets, config.watch_max_users, config.seed)
    fit_mask = is_fit_user(sets.target_users)
    fit, held_out = sets.subset(fit_mask), sets.subset(~fit_mask)
    x_fit = frozen_inputs(model, *fit.encode(spec, item_features))
    y_fit = torch.from_numpy(fit.watched_labels())
    x_sel = frozen_inputs(model, *held_out.encode(spec, item_features))
    like_sel = nn.functional.logsigmoid(x_sel[:, -1]).numpy()  # the like head's log-probability
    splits = np.cumsum(held_out.sizes)[:-1]
    log.info("watch head: fitting %d candidate rows of %d users (%.1f%% watched), selecting on %d users",
             len(y_fit), len(fit.target_users), 100 * float(y_fit.mean()), len(held_out.target_users))  # fmt: skip
    torch.manual_seed(config.seed)
    head = model.watch_head
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.watch_lr)
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = min(config.batch_size, max(MIN_WATCH_BATCH, len(y_fit) // MIN_STEPS_PER_EPOCH))
    result = WatchResult(0, 1.0, [], len(fit.target_users), len(y_fit), len(held_out.target_users))
    best_state, best_ndcg = copy.deepcopy(head.state_dict()), -np.inf
    for epoch in range(1, config.watch_epochs + 1):
        head.train()
        order = torch.randperm(len(y_fit), generator=generator)
        quiet = {} if progress else {"disable": True}
        for start in tqdm(range(0, len(order), batch_size), desc=f"watch epoch {epoch}", leave=False, **quiet):
            index = order[start : start + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(head(x_fit[index])[:, 0], y_fit[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            watch_sel = nn.functional.logsigmoid(head(x_sel)[:, 0]).numpy()
        for like_weight in config.watch_like_weights:
            scores = np.split((watch_sel + like_weight * like_sel).astype(np.float32), splits)
            lists = [chain.rank_and_cut(c, s, k)[0] for c, s in zip(held_out.candidates, scores, strict=True)]
            metrics = topk_metrics(lists, held_out.relevant, k)
            result.selection.append({"epoch": epoch, "like_weight": like_weight, **metrics})
            if metrics["ndcg"] > best_ndcg:
                best_ndcg, result.best_epoch, result.like_weight = metrics["ndcg"], epoch, like_weight
                best_state = copy.deepcopy(head.state_dict())
        latest = result.selection[-len(config.watch_like_weights) :]
        log.info("watch epoch %d: NDCG@%d by like weight %s", epoch, k, [(r["like_weight"], r["ndcg"]) for r in latest])
        if epoch - result.best_epoch >= config.patience:
            break
    head.load_state_dict(best_state)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.config = dataclasses.replace(model.config, like_weight=result.like_weight)
    model.eval()
    result.train_seconds = time.perf_counter() - started
    log.info("watch head: epoch %d, like weight %.2f, held-out NDCG@%d %.4f (%.0f s)", result.best_epoch,
             result.like_weight, k, best_ndcg, result.train_seconds)  # fmt: skip
    return result
