"""The vector-recall model: a two-tower next-item model trained for the task the channel serves.

Given a user's most recent ``window`` rated items (oldest first, with whether each was liked), predict
the item the user rates next, with a softmax over the catalogue::

    item side  v_i = E[i] + G genres_i                       (n_items, dim)   -> the kNN index
               b_i                                           item bias (popularity of being next)
    user side  x_j = E[item_j] + L[liked_j] + P[j]           (window, dim)    recent items
               u   = MLP([attention_pool(x), mean(x)])      (dim,)
    score      s(u, i) = <u, v_i> + b_i

Exported vectors are ``[u, 1]`` and ``[v_i, b_i]``, so inner-product search returns the top ``s(u, i)``.
The user side is exported to ONNX (``export_user_tower``): the online service computes ``u`` at request
time from the user's recent items (``data_exchange_center.feature_spec.encode_recent_items``), and
offline the same ONNX model computes the vectors that are evaluated.

The softmax is the full one up to ``4 * softmax_negatives`` items (MovieLens-1M: 3,706). A larger
catalogue (ML-32M: 87,585 items) would make each step that many times slower: each example's target is
then scored against ``softmax_negatives`` items drawn uniformly for the batch (a sampled softmax; a
uniform proposal needs no log-probability correction; a negative equal to the target is masked).

Training takes a sample budget (and a wall-time cap), not an epoch count that grows with the data:
every ``eval_every_samples`` examples, Recall@K of the next rated items on a validation sample decides
whether to keep going (early stopping, best state kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data_exchange_center import model_signature as sig
from data_exchange_center.feature_spec import encode_recent_items
from offline.common.onnx_export import export_onnx


@dataclass(frozen=True)
class NextItemConfig:
    dim: int = 64
    window: int = 30  # recent items on the user side
    hidden: int = 256
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    sample_budget: int = 4_000_000  # training examples seen at most (about 5 passes over ML-1M's train split)
    eval_every_samples: int = 800_000  # validation after this many examples (and at the end)
    # wall-time cap: with the ranker's ~290 s (like head with its refit, watch head), all training fits in
    # 10 min on ML-1M (2 idle cores). The validation Recall@50 curve (2026-12-02, idle): 0.372 at 132 s,
    # 0.397 at 266 s, 0.408 at 395 s, 0.412 at 601 s
    time_budget_s: float = 300.0
    patience: int = 1  # evaluations without improvement before stopping
    n_validation_users: int = 2000
    softmax_negatives: int = 4096  # sampled negatives per batch beyond 4x this many items (else the full softmax)
    n_threads: int = 1  # a shared 2-core machine: more threads are many times slower when the cores are busy
    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NextItemModel(nn.Module):
    item_genres: torch.Tensor  # (n_items + 1, n_genres) registered buffer, row 0 = padding

    def __init__(self, n_items: int, item_genres: np.ndarray, dim: int, window: int, hidden: int) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0: padding / unknown
        self.genre_map = nn.Linear(item_genres.shape[1], dim, bias=False)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        self.liked_embedding = nn.Embedding(2, dim)
        self.position_embedding = nn.Embedding(window, dim)
        self.attention = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.user_mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.register_buffer("item_genres", torch.from_numpy(item_genres.astype(np.float32)), persistent=True)
        nn.init.normal_(self.item_embedding.weight, std=0.05)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item_embedding.weight[0] = 0.0

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, dim) item side; row 0 is padding."""
        return self.item_embedding.weight + self.genre_map(self.item_genres)

    def user_vectors(self, recent_items: torch.Tensor, recent_liked: torch.Tensor) -> torch.Tensor:
        """(batch, dim) from recent_items int64 (batch, window), 0 = padding, and recent_liked float (batch, window)."""
        items = self.item_vectors()[recent_items]  # (batch, window, dim)
        liked = recent_liked.clamp(0, 1).round().long()  # (batch, window)
        positions = torch.arange(recent_items.shape[1], device=recent_items.device)
        x = items + self.liked_embedding(liked) + self.position_embedding(positions)  # (batch, window, dim)
        mask = (recent_items > 0).unsqueeze(-1).float()  # (batch, window, 1)
        logits = self.attention(x) - 1e4 * (1.0 - mask)  # (batch, window, 1)
        weights = torch.softmax(logits, dim=1) * mask  # (batch, window, 1); all zero for an empty history
        pooled = (weights * x).sum(dim=1)  # (batch, dim)
        mean = (mask * x).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (batch, dim)
        return self.user_mlp(torch.cat([pooled, mean], dim=1))  # (batch, dim)

    def logits(self, recent_items: torch.Tensor, recent_liked: torch.Tensor) -> torch.Tensor:
        """(batch, n_items + 1) scores of every item (column 0 = padding)."""
        user = self.user_vectors(recent_items, recent_liked)  # (batch, dim)
        return user @ self.item_vectors().T + self.item_bias.weight.T  # (batch, n_items + 1)

    def export_item_vectors(self) -> np.ndarray:
        """``[v_i, b_i]`` (n_items, dim + 1) float32, in vocabulary order (row 0 dropped)."""
        with torch.no_grad():
            return torch.cat([self.item_vectors(), self.item_bias.weight], dim=1)[1:].numpy().astype(np.float32)


class UserTower(nn.Module):
    """The exported user side: ``[u, 1]`` (batch, dim + 1), so that ``<[u, 1], [v_i, b_i]> = s(u, i)``."""

    def __init__(self, model: NextItemModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, recent_items: torch.Tensor, recent_liked: torch.Tensor) -> torch.Tensor:
        user = self.model.user_vectors(recent_items, recent_liked)  # (batch, dim)
        return torch.cat([user, torch.ones(user.shape[0], 1, dtype=user.dtype)], dim=1)  # (batch, dim + 1)


def export_user_tower(model: NextItemModel, window: int, onnx_path: Path) -> Path:
    """The user side as one ONNX file: inputs ``recent_items`` int64 and ``recent_liked`` float32
    (batch, window), output ``user_vector`` float32 (batch, dim + 1); dynamic batch."""
    example = (torch.ones((2, window), dtype=torch.int64), torch.zeros((2, window), dtype=torch.float32))
    names = [sig.USER_TOWER_INPUT_ITEMS, sig.USER_TOWER_INPUT_LIKED]
    return export_onnx(UserTower(model), example, names, sig.USER_TOWER_OUTPUT, onnx_path)


@dataclass(frozen=True)
class NextItemExamples:
    """Training examples: the history before each target, encoded, and the target's vocabulary position."""

    recent_items: np.ndarray  # (n, window) int64, 0 = padding, oldest first
    recent_liked: np.ndarray  # (n, window) float32
    targets: np.ndarray  # (n,) int64 in 1..n_items


def history_windows(
    item_index: np.ndarray, liked: np.ndarray, first_row: np.ndarray, positions: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``window`` rows strictly before each of ``positions`` (same user), oldest first, left padded.

    ``item_index`` (n,) and ``liked`` (n,) describe a timeline sorted by (user, time); ``first_row`` is each
    position's user's first row. Returns (m, window) int64 items (0 = padding) and float32 liked flags.
    """
    offsets = np.arange(window, 0, -1)  # window .. 1: oldest first
    rows = positions[:, None] - offsets[None, :]  # (m, window)
    valid = rows >= first_row[:, None]
    rows = np.where(valid, rows, 0)
    items = np.where(valid, item_index[rows], 0).astype(np.int64)
    flags = np.where(valid, liked[rows], 0).astype(np.float32)
    return items, flags


def train_next_item(
    examples: NextItemExamples,
    n_items: int,
    item_genres: np.ndarray,
    config: NextItemConfig,
    evaluate: Callable[[NextItemModel], float],
    log: Callable[[str], None] = print,
) -> tuple[NextItemModel, list[dict[str, float]]]:
    """Train on at most ``config.sample_budget`` examples (and ``time_budget_s``); ``evaluate(model) ->
    validation metric`` (higher is better) runs every ``eval_every_samples`` examples; the best state is
    returned."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.n_threads)
    rng = np.random.default_rng(config.seed)
    genres = np.vstack([np.zeros((1, item_genres.shape[1])), item_genres])  # row 0: padding
    model = NextItemModel(n_items, genres, config.dim, config.window, config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    items_t, liked_t = torch.from_numpy(examples.recent_items), torch.from_numpy(examples.recent_liked)
    targets_t = torch.from_numpy(examples.targets)
    n = len(targets_t)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    eval_every = max(1, config.eval_every_samples // config.batch_size)
    max_steps = max(1, config.sample_budget // config.batch_size)
    n_epochs = (max_steps + steps_per_epoch - 1) // steps_per_epoch
    sampled = n_items > 4 * config.softmax_negatives
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    best_metric, best_state, bad, step, total_loss, n_loss = -1.0, None, 0, 0, 0.0, 0
    for _ in range(n_epochs):
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            model.train()
            if sampled:
                loss = sampled_softmax_loss(model, items_t[batch], liked_t[batch], targets_t[batch], n_items,
                                            config.softmax_negatives)  # fmt: skip
            else:
                loss = nn.functional.cross_entropy(model.logits(items_t[batch], liked_t[batch]), targets_t[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            total_loss, n_loss = total_loss + float(loss.detach()), n_loss + 1
            out_of_time = time.perf_counter() - started > config.time_budget_s or step >= max_steps
            if step % eval_every and not out_of_time:
                continue
            model.eval()
            metric = evaluate(model)
            elapsed = time.perf_counter() - started
            history.append({"step": step, "epoch": round(step / steps_per_epoch, 2),
                            "train_loss": round(total_loss / n_loss, 5), "val_recall": round(metric, 5),
                            "seconds": round(elapsed, 1)})  # fmt: skip
            log(f"next-item step {step} (epoch {step / steps_per_epoch:.2f}): loss {total_loss / n_loss:.4f}, "
                f"validation Recall {metric:.4f}, {elapsed:.0f} s")  # fmt: skip
            total_loss, n_loss = 0.0, 0
            if metric > best_metric:
                best_metric, bad = metric, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            if bad > config.patience or out_of_time:
                break
        else:
            continue
        break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history


def sampled_softmax_loss(
    model: NextItemModel,
    recent_items: torch.Tensor,
    recent_liked: torch.Tensor,
    targets: torch.Tensor,
    n_items: int,
    n_negatives: int,
) -> torch.Tensor:
    """Cross-entropy of each target against ``n_negatives`` items drawn uniformly for the batch (the uniform
    proposal's log-probability is the same for every item, so the logits need no correction)."""
    user = model.user_vectors(recent_items, recent_liked)  # (batch, dim)
    table = model.item_vectors()  # (n_items + 1, dim)
    bias = model.item_bias.weight[:, 0]  # (n_items + 1,)
    negatives = torch.randint(1, n_items + 1, (n_negatives,))  # (k,)
    positive = (user * table[targets]).sum(dim=1, keepdim=True) + bias[targets, None]  # (batch, 1)
    negative = user @ table[negatives].T + bias[negatives]  # (batch, k)
    negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([positive, negative], dim=1)  # (batch, 1 + k): the target is column 0
    return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.int64))


def onnx_user_vectors(
    onnx_path: Path, seen: list[np.ndarray], seen_labels: list[np.ndarray], vocab_ids: np.ndarray, window: int
) -> np.ndarray:
    """``[u, 1]`` (n_users, dim + 1) of each user's history, by ONNX Runtime on the exported user side,
    with the serving encoding (``encode_recent_items``): the vectors that are served are these."""
    import onnxruntime as ort

    encoded = [encode_recent_items(s, lab, vocab_ids, window) for s, lab in zip(seen, seen_labels, strict=True)]
    if not encoded:
        return np.zeros((0, 0), np.float32)
    items = np.concatenate([e[0] for e in encoded])  # (n_users, window)
    liked = np.concatenate([e[1] for e in encoded])  # (n_users, window)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    parts = [
        session.run([sig.USER_TOWER_OUTPUT], sig.tower_inputs(items[i : i + 4096], liked[i : i + 4096]))[0]
        for i in range(0, len(items), 4096)
    ]
    return np.concatenate(parts).astype(np.float32)
