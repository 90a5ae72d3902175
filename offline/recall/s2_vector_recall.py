"""Stage recall/2: the vector channel's next-item model, trained on the training timeline, exported.

Reads preprocess/samples.parquet, preprocess/item_terms.parquet (the catalogue) and dataset/items.parquet
(genres). Trains the two-tower next-item model (offline/recall/next_item.py) on every train impression
(target: the item rated next; inputs: the previous ``window`` items and whether each was liked), within
a sample budget with early stopping on a validation sample (targets: the test split's positives, history:
the train split, the user's train items excluded). Writes

- recall/item_vectors.npz (ids, ``[v_i, b_i]``): the kNN index's vectors, in vocabulary order;
- recall/vector_model/user_tower.onnx and model_args.json: the user side, computed at request time;
- recall/vector_model/model.pt, reference_vectors.parquet (PyTorch vectors of the first users);
- recall/user_vectors.npz (ids, ``[u, 1]``, tower_sha256): the user side of every user after the offline
  period, by ONNX Runtime with the serving encoding (what the chain evaluates and what the profile store
  serves), with the SHA-256 of the tower file that computed them: the service runs the tower only for a
  user whose history changed since (live events) or whose published vector is of another tower.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd
import torch

from data_exchange_center import model_signature as sig
from data_exchange_center import schema as S
from data_exchange_center.artifacts import (
    ArtifactError,
    atomic_path,
    read_parquet,
    sha256_of,
    update_metrics,
    write_json,
    write_metadata,
    write_npz,
    write_parquet,
)
from data_exchange_center.feature_spec import encode_recent_items
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import topk_metrics
from offline.common.dataset import dataset_name
from offline.common.holdout import TOPK
from offline.common.stage import add_config_arguments, config_from_args, run_stage, stage_parser
from offline.common.user_states import split_by_user
from offline.preprocess.pit_features import item_genre_flags, list_genres
from offline.recall.next_item import (
    NextItemConfig,
    NextItemExamples,
    NextItemModel,
    export_user_tower,
    history_windows,
    onnx_user_vectors,
    train_next_item,
)

log = logging.getLogger(__name__)
N_REFERENCE_USERS = 1000
ONNX_TOLERANCE = 1e-4


def training_examples(
    rows: pd.DataFrame, vocab_ids: np.ndarray, window: int, max_examples: int | None = None, seed: int = 0
) -> NextItemExamples:
    """One example per row of ``rows`` (sorted by user and time): its item, and the items before it. With
    more rows than ``max_examples`` (the sample budget: more would never be trained on), a seeded sample of
    that many rows, in timeline order: the windows' memory stays bounded on large data."""
    item_index = np.searchsorted(vocab_ids, rows[S.ITEM_ID].to_numpy()) + 1
    users = rows[S.USER_ID].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    first_row = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    positions = np.arange(len(rows))
    if max_examples is not None and len(rows) > max_examples:
        positions = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_examples, replace=False))
    items, liked = history_windows(item_index, rows[S.LABEL].to_numpy(), first_row[positions], positions, window)
    return NextItemExamples(items, liked, item_index[positions].astype(np.int64))


def validation_sample(samples: pd.DataFrame, n_users: int, seed: int) -> tuple[list, list, list, list]:
    """Users with test-split positives (a sample): train items, train labels, test positives."""
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    users, seen = split_by_user(train, S.ITEM_ID)
    _, labels = split_by_user(train, S.LABEL)
    target_users, relevant = split_by_user(samples[(samples[S.SPLIT] == S.SPLIT_TEST) & (samples[S.LABEL] == 1)],
                                           S.ITEM_ID)  # fmt: skip
    history = dict(zip(users.tolist(), zip(seen, labels, strict=True), strict=True))
    keep = [i for i, u in enumerate(target_users.tolist()) if u in history]
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(keep, size=min(n_users, len(keep)), replace=False).tolist())
    return ([history[int(target_users[i])][0] for i in keep], [history[int(target_users[i])][1] for i in keep],
            [relevant[i] for i in keep], target_users[keep].tolist())  # fmt: skip


def recall_of_vectors(
    user_vectors: np.ndarray, item_vectors: np.ndarray, vocab_ids: np.ndarray, seen: list, relevant: list, k: int
) -> float:
    """Recall@k of exact inner-product search, each user's seen items excluded."""
    scores = user_vectors @ item_vectors.T  # (n_users, n_items)
    for row, items in enumerate(seen):
        scores[row, np.searchsorted(vocab_ids, items)] = -np.inf
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-scores, top, axis=1).argsort(axis=1, kind="stable")
    lists = [vocab_ids[r] for r in np.take_along_axis(top, order, axis=1)]
    return float(topk_metrics(lists, relevant, k)["recall"])


def vector_recall(paths: ArtifactPaths, config: NextItemConfig) -> dict[str, object]:
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    vocab_ids = np.sort(read_parquet(paths.item_terms_path, (S.ITEM_ID,))[S.ITEM_ID].to_numpy(np.int64))
    items = read_parquet(paths.items_path, S.ITEMS_COLUMNS)
    genres = item_genre_flags(items, list_genres(items)).reindex(vocab_ids, fill_value=0).to_numpy(np.float32)
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    examples = training_examples(train, vocab_ids, config.window, config.sample_budget, config.seed)
    val_seen, val_labels, val_relevant, _ = validation_sample(samples, config.n_validation_users, config.seed)
    val_inputs = [
        encode_recent_items(s, lab, vocab_ids, config.window) for s, lab in zip(val_seen, val_labels, strict=True)
    ]
    val_items = torch.from_numpy(np.concatenate([v[0] for v in val_inputs]))
    val_liked = torch.from_numpy(np.concatenate([v[1] for v in val_inputs]))

    def evaluate(model: NextItemModel) -> float:
        with torch.no_grad():
            users = torch.cat([model.user_vectors(val_items, val_liked), torch.ones(len(val_items), 1)], dim=1)
        return recall_of_vectors(users.numpy(), model.export_item_vectors(), vocab_ids, val_seen, val_relevant, TOPK)

    log.info("training the next-item model on %d train impressions (budget %d examples, at most %.0f s)",
             len(examples.targets), config.sample_budget, config.time_budget_s)  # fmt: skip
    model, history = train_next_item(examples, len(vocab_ids), genres, config, evaluate, log.info)
    del examples
    best = max(history, key=lambda h: h["val_recall"]) if history else {"val_recall": float("nan"), "epoch": 0}
    item_vectors = model.export_item_vectors()
    write_npz(paths.item_vectors_path, **{S.VECTOR_IDS: vocab_ids, S.VECTORS: item_vectors})
    save_user_side(paths, model, config, vocab_ids)
    offline = samples[samples[S.SPLIT] != S.SPLIT_ONLINE]
    user_ids, seen = split_by_user(offline, S.ITEM_ID)
    _, labels = split_by_user(offline, S.LABEL)
    user_vectors = onnx_user_vectors(paths.user_tower_onnx_path, seen, labels, vocab_ids, config.window)
    check_against_torch(paths, model, user_ids, seen, labels, vocab_ids, config.window, user_vectors)
    tower = np.array(sha256_of(paths.user_tower_onnx_path))
    write_npz(paths.user_vectors_path, **{S.VECTOR_IDS: user_ids, S.VECTORS: user_vectors, S.VECTOR_TOWER: tower})
    result: dict[str, object] = {"val_recall_at_50": best["val_recall"], "best_epoch": best["epoch"],
              "train_seconds": history[-1]["seconds"] if history else 0.0}  # fmt: skip
    write_metadata(paths.recall_dir, "s2_vector_recall", {**result, "dim": int(user_vectors.shape[1]),
                   "history": history}, config=config.to_dict(), dataset=dataset_name(paths))  # fmt: skip
    update_metrics(paths.metrics_path, {"vector_recall": result})
    log.info("vector model: %s", result)
    return result


def save_user_side(paths: ArtifactPaths, model: NextItemModel, config: NextItemConfig, vocab_ids: np.ndarray) -> None:
    paths.vector_model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths.vector_model_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    export_user_tower(model, config.window, paths.user_tower_onnx_path)
    write_json({"window": config.window, "dim": config.dim, "n_items": len(vocab_ids), "hidden": config.hidden,
                "inputs": [sig.USER_TOWER_INPUT_ITEMS, sig.USER_TOWER_INPUT_LIKED], "output": sig.USER_TOWER_OUTPUT,
                "vocabulary": "recall/item_vectors.npz ids (position + 1; 0 = padding or unknown)",
                "config": config.to_dict()}, paths.user_tower_args_path)  # fmt: skip


def check_against_torch(
    paths: ArtifactPaths,
    model: NextItemModel,
    user_ids: np.ndarray,
    seen: list[np.ndarray],
    labels: list[np.ndarray],
    vocab_ids: np.ndarray,
    window: int,
    onnx_vectors: np.ndarray,
) -> None:
    """ONNX Runtime equals PyTorch on the first users; their PyTorch vectors become the reference."""
    n = min(N_REFERENCE_USERS, len(user_ids))
    encoded = [encode_recent_items(s, lab, vocab_ids, window) for s, lab in zip(seen[:n], labels[:n], strict=True)]
    with torch.no_grad():
        users = model.user_vectors(torch.from_numpy(np.concatenate([e[0] for e in encoded])),
                                   torch.from_numpy(np.concatenate([e[1] for e in encoded])))  # fmt: skip
    reference = torch.cat([users, torch.ones(n, 1)], dim=1).numpy()
    worst = float(np.abs(reference - onnx_vectors[:n]).max()) if n else 0.0
    if worst > ONNX_TOLERANCE:
        raise ArtifactError(f"the user tower's ONNX Runtime vectors differ from PyTorch by {worst:.2e} on {n} users")
    log.info("user tower: ONNX Runtime equals PyTorch on %d users (max difference %.2e)", n, worst)
    write_parquet(pd.DataFrame({S.USER_ID: user_ids[:n], S.VECTORS: list(reference.astype(np.float32))}),
                  paths.user_tower_reference_path)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_config_arguments(parser, NextItemConfig)
    args = parser.parse_args(argv)
    config = config_from_args(NextItemConfig, args)
    return run_stage("s2_vector_recall", args, lambda paths: vector_recall(paths, config))


if __name__ == "__main__":
    sys.exit(main())
