"""Training the next-item vector model on a small generated timeline (integration: it trains a model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline.recall.next_item import (
    NextItemConfig,
    NextItemExamples,
    NextItemModel,
    history_windows,
    sampled_softmax_loss,
    train_next_item,
)

pytestmark = pytest.mark.integration


def sequential_timeline(n_users: int, n_items: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Users walk the catalogue in steps of +1 (mod n_items) from a random start: the next item is
    predictable from the last one, which popularity cannot do."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, size=n_users)
    items = (starts[:, None] + np.arange(length)[None, :]) % n_items + 1  # (n_users, length), 1-based
    return items.ravel(), np.repeat(np.arange(n_users), length)


@pytest.mark.parametrize("softmax_negatives", [4096, 8], ids=["full-softmax", "sampled-softmax"])
def test_the_next_item_model_learns_a_sequential_pattern_within_its_sample_budget(softmax_negatives: int) -> None:
    n_items, length, window = 40, 12, 5  # 40 items > 4 x 8: the sampled softmax with 8 negatives per batch
    item_index, users = sequential_timeline(300, n_items, length, seed=0)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    first = np.repeat(starts, length)
    liked = np.ones(len(item_index), dtype=np.int64)
    recent, flags = history_windows(item_index, liked, first, np.arange(len(item_index)), window)
    keep = np.arange(len(item_index)) > first  # at least one item of history
    examples = NextItemExamples(recent[keep], flags[keep], item_index[keep].astype(np.int64))
    val_recent = torch.from_numpy(recent[keep][:200])
    val_flags = torch.from_numpy(flags[keep][:200])
    val_targets = item_index[keep][:200]

    def hit_rate_at_1(model) -> float:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            top = model.logits(val_recent, val_flags)[:, 1:].argmax(dim=1).numpy() + 1
        return float((top == val_targets).mean())

    config = NextItemConfig(dim=16, window=window, hidden=32, batch_size=128, lr=1e-2, sample_budget=40_000,
                            eval_every_samples=10_000, patience=10, n_validation_users=10,
                            softmax_negatives=softmax_negatives)  # fmt: skip
    genres = np.zeros((n_items, 2), dtype=np.float32)
    model, history = train_next_item(examples, n_items, genres, config, hit_rate_at_1, log=lambda _: None)
    assert len(history) == 4  # the sample budget, not epochs, ends training: 40k / 10k evaluations
    assert history[-1]["step"] * config.batch_size >= config.sample_budget - config.batch_size
    assert hit_rate_at_1(model) == max(h["val_recall"] for h in history)  # the best state is kept
    # popularity (uniform here) would hit 1 in 40; 8 sampled negatives learn more slowly than the full softmax
    assert hit_rate_at_1(model) > (0.5 if softmax_negatives > n_items else 0.2)


def test_sampled_softmax_masks_a_negative_equal_to_the_target() -> None:
    torch.manual_seed(0)
    model = NextItemModel(n_items=1, item_genres=np.zeros((2, 2), np.float32), dim=4, window=3, hidden=8)
    recent = torch.tensor([[0, 1, 1]])
    liked = torch.ones(1, 3)
    # one item: every negative is the target, so the target is the only candidate left
    loss = sampled_softmax_loss(model, recent, liked, torch.tensor([1]), n_items=1, n_negatives=16)
    assert loss.detach().item() == 0.0
    model = NextItemModel(n_items=50, item_genres=np.zeros((51, 2), np.float32), dim=4, window=3, hidden=8)
    loss = sampled_softmax_loss(model, recent, liked, torch.tensor([7]), n_items=50, n_negatives=16)
    loss.backward()
    assert torch.isfinite(loss) and loss.detach().item() > 0
    assert model.item_embedding.weight.grad is not None and model.item_embedding.weight.grad[7].abs().sum() > 0
