"""Training and evaluation of the DeepFM ranker.

Model selection never looks at the test split: the last ``val_fraction`` of each user's training
impressions (by time) is the validation slice, the rest is fitted, and early stopping on validation AUC
selects the number of epochs. With ``refit`` the model is then retrained from the same seed on every
training row for that many epochs, so it also learns from the most recent impressions (on ML-1M that
adds 0.003 test AUC). The caller scores the test split once, with the final model.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from data_exchange_center import schema as S
from data_exchange_center.feature_spec import FeatureSpec, combine_features
from data_exchange_center.user_history import AFFINITY_PREFIXES
from offline.common.metrics import roc_auc, validation_mask
from offline.rank.deepfm import DeepFM, RankerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of ranker training, with its default (the CLI exposes each one)."""

    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 4096
    lr: float = 1e-2
    weight_decay: float = 1e-5  # AdamW, decoupled, on every parameter
    lr_decay: float = 0.85  # the learning rate is multiplied by this after every epoch
    embed_l2: float = 0.015  # L2 penalty on the sparse embedding rows of each batch
    embed_dim: int = 16
    hidden_dims: tuple[int, ...] = (64, 32)
    dropout: float = 0.2
    fm_dense: str = "none"  # dense fields in the FM term: "none", "item" (genre flags), "all" (both overfit)
    genre_crosses: bool = True  # cross the user's per-genre affinities with the item's genres in the model
    refit: bool = True  # after selection, retrain on all training rows for the selected number of epochs
    mlp_on_embeddings: bool = False  # measured on ML-1M: the MLP over id embeddings overfits
    val_fraction: float = 0.1  # the last share of each user's train impressions used for model selection
    patience: int = 2  # epochs without a better validation AUC before stopping
    seed: int = 42
    n_threads: int = 1  # 2-core machine: 2 threads were 10% faster when idle, 5-20x slower when shared
    max_train_seconds: float = 300.0  # wall-time budget of the epoch loop; the best epoch so far is kept
    max_train_rows: int = 4_000_000  # beyond, a stable sample of whole users (ML-1M: 0.75M rows, all of them)
    eval_batch_size: int = 65_536
    # the watch head (offline/rank/watch.py), for a feature spec with the candidates' recall evidence
    watch_hidden_dims: tuple[int, ...] = (64, 32)
    watch_epochs: int = 8  # upper bound; the epoch and like weight are selected on held-out users' NDCG@50
    watch_lr: float = 3e-3
    watch_like_weights: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)  # served = p_watch * p_like ** w
    watch_max_users: int = 8_000  # candidate rows grow with the users: at most this many (half fit, half select)

    def ranker_config(self, spec: FeatureSpec) -> RankerConfig:
        crosses = genre_cross_fields(spec) if self.genre_crosses else {}
        return RankerConfig(
            vocab_sizes=spec.vocab_sizes,
            n_dense=len(spec.dense),
            embed_dim=self.embed_dim,
            hidden_dims=list(self.hidden_dims),
            dropout=self.dropout,
            fm_dense_fields=fm_dense_fields(spec, self.fm_dense),
            mlp_on_embeddings=self.mlp_on_embeddings,
            n_evidence=spec.n_evidence,
            watch_hidden_dims=list(self.watch_hidden_dims),
            cross_user_fields=crosses.get("cross_user_fields", []),
            cross_item_fields=crosses.get("cross_item_fields", []),
        )


def fm_dense_fields(spec: FeatureSpec, which: str) -> list[int]:
    """Positions of the dense fields that take part in the FM term."""
    choices = {"none": lambda f: False, "item": lambda f: f.source == "item", "all": lambda f: True}
    if which not in choices:
        raise ValueError(f"fm_dense must be one of {sorted(choices)}, not {which!r}")
    return [j for j, f in enumerate(spec.dense) if choices[which](f)]


def genre_cross_fields(spec: FeatureSpec) -> dict[str, list]:
    """Dense positions of each per-genre user affinity group and of the item's genre flags (genre order)."""
    position = {f.name: j for j, f in enumerate(spec.dense)}
    slugs = [S.genre_slug(g) for g in spec.genres]
    item_fields = [position.get(S.GENRE_FLAG_PREFIX + slug) for slug in slugs]
    groups = [[position.get(prefix + slug) for slug in slugs] for prefix in AFFINITY_PREFIXES]
    if not slugs or None in item_fields or any(None in group for group in groups):
        log.warning("the feature spec lacks genre flags or affinities: no genre crosses")
        return {}
    return {"cross_user_fields": groups, "cross_item_fields": item_fields}


@dataclass(frozen=True)
class EncodedRows:
    """Model inputs and labels of a set of rows."""

    sparse: torch.Tensor  # (n, n_sparse) int64
    dense: torch.Tensor  # (n, n_dense) float32
    labels: torch.Tensor  # (n,) float32

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> EncodedRows:
        """The rows where ``mask`` is true (a copy)."""
        return self.take(np.flatnonzero(mask))

    def take(self, index: np.ndarray) -> EncodedRows:
        """The rows at ``index``, in that order (a copy)."""
        positions = torch.from_numpy(np.asarray(index, dtype=np.int64))
        return EncodedRows(self.sparse[positions], self.dense[positions], self.labels[positions])

    def slice(self, start: int, stop: int) -> EncodedRows:
        """Rows ``start:stop`` (a view, no copy)."""
        return EncodedRows(self.sparse[start:stop], self.dense[start:stop], self.labels[start:stop])


@dataclass
class FitResult:
    model: DeepFM  # holds the weights of the best epoch
    best_epoch: int
    best_val_auc: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


# --- data ------------------------------------------------------------------------------------------
def encode_rows(spec: FeatureSpec, rows: pd.DataFrame, evidence: np.ndarray | None = None) -> EncodedRows:
    """Encode feature rows exactly as serving does: ``encode_users`` + ``encode_items`` + ``combine_features``;
    ``evidence`` is the rows' recall evidence (zeros when None: rated items were not recalled)."""
    evidence = spec.evidence(evidence, len(rows))
    sparse, dense = combine_features(spec.encode_users(rows), spec.encode_items(rows), evidence)
    labels = rows[S.LABEL].to_numpy(dtype=np.float32)
    return EncodedRows(
        torch.from_numpy(sparse), torch.from_numpy(np.ascontiguousarray(dense)), torch.from_numpy(labels)
    )


@torch.no_grad()
def predict_logits(model: DeepFM, data: EncodedRows, batch_size: int) -> np.ndarray:
    """Logits (n,) of the model in evaluation mode."""
    model.eval()
    out = [
        model.logits(data.sparse[i : i + batch_size], data.dense[i : i + batch_size])
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out)[:, 0].numpy() if out else np.empty(0, dtype=np.float32)


def evaluate(model: DeepFM, data: EncodedRows, batch_size: int) -> dict[str, float]:
    """AUC and mean log loss of ``data``."""
    logits = predict_logits(model, data, batch_size)
    loss = nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), data.labels).item()
    return {"auc": roc_auc(data.labels.numpy(), logits), "loss": loss}


# --- training --------------------------------------------------------------------------------------
def seed_everything(seed: int, n_threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (nothing here draws from it; seeded for code that might)
    torch.set_num_threads(n_threads)


def train_epoch(
    model: DeepFM,
    optimizer: torch.optim.Optimizer,
    data: EncodedRows,
    batch_size: int,
    generator: torch.Generator,
    description: str,
    progress: bool,
    embed_l2: float = 0.0,
) -> float:
    """One pass over ``data`` in a seeded random order; returns the mean training log loss."""
    model.train()
    order = torch.randperm(len(data), generator=generator)
    total, n_seen = 0.0, 0
    quiet = {} if progress else {"disable": True}  # otherwise the stage's --quiet setting decides
    bar = tqdm(range(0, len(data), batch_size), desc=description, unit="batch", leave=False, **quiet)
    for start in bar:
        index = order[start : start + batch_size]
        logits = model.logits(data.sparse[index], data.dense[index])[:, 0]  # (batch,)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, data.labels[index])
        objective = loss + embed_l2 * model.embedding_l2(data.sparse[index]) if embed_l2 else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total += loss.item() * len(index)
        n_seen += len(index)
        bar.set_postfix(loss=f"{total / n_seen:.4f}", refresh=False)
    return total / max(n_seen, 1)


@dataclass
class Trainer:
    """A freshly seeded model with its optimizer, schedule and shuffling generator."""

    model: DeepFM
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    config: TrainConfig

    @classmethod
    def create(cls, ranker_config: RankerConfig, config: TrainConfig) -> Trainer:
        seed_everything(config.seed, config.n_threads)
        model = DeepFM(ranker_config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
        return cls(model, optimizer, scheduler, torch.Generator().manual_seed(config.seed), config)

    def run_epoch(self, data: EncodedRows, description: str, progress: bool) -> float:
        """One epoch over ``data``; returns its mean training log loss."""
        cfg = self.config
        loss = train_epoch(self.model, self.optimizer, data, cfg.batch_size, self.generator, description, progress,
                           cfg.embed_l2)  # fmt: skip
        self.scheduler.step()
        return loss


def fit(
    ranker_config: RankerConfig,
    fit_data: EncodedRows,
    val_data: EncodedRows,
    config: TrainConfig,
    progress: bool = True,
) -> FitResult:
    """Train with early stopping on validation AUC; return the model restored to its best epoch."""
    trainer = Trainer.create(ranker_config, config)
    model = trainer.model
    best_state, best_epoch, best_auc = copy.deepcopy(model.state_dict()), 0, -np.inf
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        train_loss = trainer.run_epoch(fit_data, f"epoch {epoch}/{config.epochs}", progress)
        val = evaluate(model, val_data, config.eval_batch_size)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_auc": val["auc"],
                        "seconds": time.perf_counter() - epoch_started})  # fmt: skip
        log.info("epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f (%.1f s)", epoch, train_loss, val["loss"],
                 val["auc"], history[-1]["seconds"])  # fmt: skip
        if val["auc"] > best_auc:
            best_state, best_epoch, best_auc = copy.deepcopy(model.state_dict()), epoch, val["auc"]
        elif epoch - best_epoch >= config.patience:
            log.info("early stop: no better validation AUC for %d epochs", config.patience)
            break
        if time.perf_counter() - started > config.max_train_seconds:
            log.warning("time budget of %.0f s spent after epoch %d", config.max_train_seconds, epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, best_epoch, float(best_auc), time.perf_counter() - started, history)


def refit(ranker_config: RankerConfig, rows: EncodedRows, n_epochs: int, config: TrainConfig,
          progress: bool = True) -> tuple[DeepFM, list[dict[str, float]]]:  # fmt: skip
    """Retrain from the same seed on all training rows (validation slice included) for ``n_epochs``, the
    number selected on validation: the selected recipe, fitted to the most recent data too."""
    trainer = Trainer.create(ranker_config, config)
    history = []
    for epoch in range(1, n_epochs + 1):
        epoch_started = time.perf_counter()
        train_loss = trainer.run_epoch(rows, f"refit {epoch}/{n_epochs}", progress)
        history.append({"epoch": epoch, "train_loss": train_loss, "seconds": time.perf_counter() - epoch_started})
        log.info("refit epoch %d: train loss %.4f (%.1f s)", epoch, train_loss, history[-1]["seconds"])
    trainer.model.eval()
    return trainer.model, history


@dataclass
class TrainedRanker:
    """The model that scores the test split and is exported, and how it was selected."""

    model: DeepFM
    selection: FitResult  # early stopping on the validation slice
    refit_history: list[dict[str, float]]  # per-epoch losses of the refit on all training rows (if any)
    train_seconds: float  # selection + refit

    def history_record(self) -> dict[str, Any]:
        """The training-curve artifact: per-epoch losses and validation AUC, the selected epoch, the refit."""
        return {
            "best_epoch": self.selection.best_epoch,
            "best_val_auc": self.selection.best_val_auc,
            "train_seconds": self.train_seconds,
            "epochs": self.selection.history,
            "refit_epochs": self.refit_history,
        }


def train_ranker(
    spec: FeatureSpec, train_rows: pd.DataFrame, config: TrainConfig, progress: bool = True
) -> TrainedRanker:
    """Select the number of epochs on the validation slice at the end of the training period, then (if
    ``config.refit``) retrain on every training row for that many epochs."""
    is_val = validation_mask(train_rows, config.val_fraction)
    n_fit = int((~is_val).sum())
    encoded = encode_rows(spec, train_rows)
    del train_rows  # the caller may drop its reference too: the encoded rows are all that training needs
    # fitted rows first, then the validation slice: both are views of one copy
    rows = encoded.take(np.r_[np.flatnonzero(~is_val), np.flatnonzero(is_val)])
    del encoded
    ranker_config = config.ranker_config(spec)
    log.info("fitting %d rows, validating on %d (the last %.0f%% of each user's training impressions)",
             n_fit, len(rows) - n_fit, 100 * config.val_fraction)  # fmt: skip
    selection = fit(ranker_config, rows.slice(0, n_fit), rows.slice(n_fit, len(rows)), config, progress)
    if not config.refit:
        return TrainedRanker(selection.model, selection, [], selection.train_seconds)
    started = time.perf_counter()
    model, refit_history = refit(ranker_config, rows, selection.best_epoch, config, progress)
    return TrainedRanker(model, selection, refit_history, selection.train_seconds + time.perf_counter() - started)
