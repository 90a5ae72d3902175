"""The vector-recall model: a factorization model on user and item ids with two heads.

One user embedding is shared by two item-side heads::

    like   r(u, i) = mu + b_u + b_i + <U_u, V_i>          fitted to ratings (MSE)        -> test AUC
    watch  s(u, i) = c_i + <U_u, W_i>                      rated vs sampled unrated (BCE) -> retrieval

The like head is what the reference's recall model learns (like versus dislike among rated items);
on its own it retrieves poorly, because it never sees the items a user did not rate. The watch head
is trained against unrated items sampled by popularity^0.75, so its inner product ranks the whole
catalogue. The exported vectors are the watch head's: user ``[U_u, 1]`` and item ``[W_i, c_i]``, so
inner-product search (exact in-process, ``max_inner_product`` in Elasticsearch) returns top ``s(u, i)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class FactorizationConfig:
    dim: int = 32
    epochs: int = 12  # upper bound; the best epoch is selected on validation
    batch_size: int = 8192
    lr: float = 0.003
    l2: float = 0.05  # on the embeddings of a batch (like head and watch head)
    n_negatives: int = 2  # sampled unrated items per rated item, for the watch head
    negative_power: float = 0.75  # sample negatives by popularity ** power
    watch_weight: float = 1.0
    seed: int = 42

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class TwoHeadFactorization(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, global_mean: float) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.like_item = nn.Embedding(n_items, dim)
        self.watch_item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.like_bias = nn.Embedding(n_items, 1)
        self.watch_bias = nn.Embedding(n_items, 1)
        self.global_mean = global_mean
        for table in (self.user, self.like_item, self.watch_item):
            nn.init.normal_(table.weight, std=0.01)
        for table in (self.user_bias, self.like_bias, self.watch_bias):
            nn.init.zeros_(table.weight)

    def like(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted rating, (batch,)."""
        dot = (self.user(users) * self.like_item(items)).sum(-1)  # (batch,)
        return self.global_mean + self.user_bias(users).squeeze(-1) + self.like_bias(items).squeeze(-1) + dot

    def watch(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Watch logit, (batch,)."""
        return (self.user(users) * self.watch_item(items)).sum(-1) + self.watch_bias(items).squeeze(-1)

    def export_vectors(self, trained_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """User ``[U_u, 1]`` (n_users, dim + 1) and item ``[W_i, c_i]`` (n_items, dim + 1), float32.

        Items never seen in training keep their initial (near-zero) vector, which would outscore the
        learned negative logits; they get a zero vector and the lowest bias so they never surface."""
        with torch.no_grad():
            users = torch.cat([self.user.weight, torch.ones(self.user.num_embeddings, 1)], dim=1).numpy()
            items = torch.cat([self.watch_item.weight, self.watch_bias.weight], dim=1).numpy().copy()
        unseen = ~trained_items
        items[unseen] = 0.0
        items[unseen, -1] = items[~unseen, -1].min() - 1.0 if (~unseen).any() else -1.0
        return users.astype(np.float32), items.astype(np.float32)


@dataclass(frozen=True)
class Interactions:
    users: np.ndarray  # (n,) int64 dense user index
    items: np.ndarray  # (n,) int64 dense item index
    ratings: np.ndarray  # (n,) float32


def train_factorization(
    train: Interactions,
    n_users: int,
    n_items: int,
    config: FactorizationConfig,
    epochs: int,
    on_epoch: callable | None = None,  # type: ignore[valid-type]
) -> TwoHeadFactorization:
    """Fit both heads for ``epochs`` epochs; ``on_epoch(epoch, model, loss)`` is called after each."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = TwoHeadFactorization(n_users, n_items, config.dim, float(train.ratings.mean()))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    counts = np.bincount(train.items, minlength=n_items).astype(np.float64) ** config.negative_power
    negative_p = counts / counts.sum()
    users, items = torch.from_numpy(train.users), torch.from_numpy(train.items)
    ratings = torch.from_numpy(train.ratings)
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(users)))
        total = 0.0
        for start in tqdm(
            range(0, len(order), config.batch_size), desc=f"factorization epoch {epoch + 1}", leave=False
        ):
            batch = order[start : start + config.batch_size]
            loss = _batch_loss(model, users[batch], items[batch], ratings[batch], negative_p, rng, config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        if on_epoch is not None:
            on_epoch(epoch, model, total / len(order))
    return model


def _batch_loss(
    model: TwoHeadFactorization,
    users: torch.Tensor,
    items: torch.Tensor,
    ratings: torch.Tensor,
    negative_p: np.ndarray,
    rng: np.random.Generator,
    config: FactorizationConfig,
) -> torch.Tensor:
    like_loss = ((model.like(users, items) - ratings) ** 2).mean()
    neg_users = users.repeat(config.n_negatives)  # (batch * n_negatives,)
    neg_items = torch.from_numpy(rng.choice(len(negative_p), size=len(neg_users), p=negative_p))
    logits = torch.cat([model.watch(users, items), model.watch(neg_users, neg_items)])
    targets = torch.cat([torch.ones(len(users)), torch.zeros(len(neg_users))])
    watch_loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    reg = (
        model.user(users).pow(2).sum(-1).mean()
        + model.like_item(items).pow(2).sum(-1).mean()
        + model.watch_item(items).pow(2).sum(-1).mean()
    )
    return like_loss + config.watch_weight * watch_loss + config.l2 * reg


def predict_like(model: TwoHeadFactorization, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.like(torch.from_numpy(users), torch.from_numpy(items)).numpy()
