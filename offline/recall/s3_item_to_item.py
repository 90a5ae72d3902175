"""Stage recall/3: the item-to-item channel (EASE), kept as a top-N neighbour table, and evaluated.

Reads preprocess/samples.parquet and the artifacts of stage recall/1. At serving time the user's seen
items are the triggers, weighted by recency (``0.5 ** (age / half_life)``) and by whether they were
liked (``data_exchange_center.chain.TriggerPolicy``); candidates are ranked by summed weighted neighbour
weights. The policy (half-life, weight of unliked items; or today's fixed last 20) is selected on
validation: EASE fitted on the training split, triggers from it, targets the test split's positives.
Then EASE is refitted on all offline impressions. Writes recall/item_neighbors.parquet (itemid,
neighbor, weight) and recall/i2i_params.json (the selected trigger policy; this stage is its only writer).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet, update_metrics, write_json, write_metadata, write_parquet
from data_exchange_center.item_index import ItemIndex, neighbor_matrix
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import evaluation_sample, topk_metrics
from offline.common.dataset import dataset_name
from offline.common.holdout import TOPK, Holdout, evaluate_recommender
from offline.common.stage import add_config_arguments, config_from_args, run_stage, stage_parser
from offline.common.user_states import UserStates, channel_recommender, split_by_user
from offline.recall.item_to_item import ItemToItemConfig, fit_ease, neighbor_table

log = logging.getLogger(__name__)
HALF_LIFE_GRID = (2.0, 5.0, 10.0, 20.0)  # recency half-life of the trigger weights, in seen items
UNLIKED_WEIGHT_GRID = (0.3, 0.5, 1.0)
HALF_LIVES_KEPT = 10  # triggers older than this many half-lives weigh < 0.1 %: left out to bound the request


def trigger_grid() -> list[chain.TriggerPolicy]:
    """The policies compared on validation: today's fixed last 20, and recency-weighted ones."""
    grid = [chain.TriggerPolicy()]
    for half_life in HALF_LIFE_GRID:
        for unliked in UNLIKED_WEIGHT_GRID:
            grid.append(chain.TriggerPolicy(int(np.ceil(HALF_LIVES_KEPT * half_life)), half_life, unliked))
    return grid


@dataclass(frozen=True)
class ValidationResult:
    best: chain.TriggerPolicy
    metrics: list[dict[str, float]]  # per policy of the grid: its parameters and Recall/NDCG@K


def select_trigger_policy(samples: pd.DataFrame, config: ItemToItemConfig, paths: ArtifactPaths) -> ValidationResult:
    """Top-K of the i2i channel per trigger policy: EASE on the train split, triggers from it, targets the
    test positives; the best NDCG@K wins. The train-split neighbour table is kept for later selections on
    the same validation setup."""
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    item_ids, weights = fit_ease(train[[S.USER_ID, S.ITEM_ID]], config)
    table = neighbor_table(item_ids, weights, config.n_neighbors)
    del weights
    write_parquet(table, paths.validation_neighbors_path)
    nbr_items, nbr_weights = neighbor_matrix(table, item_ids)
    targets = samples[(samples[S.SPLIT] == S.SPLIT_TEST) & (samples[S.LABEL] == 1)]
    target_users, relevant = split_by_user(targets, S.ITEM_ID)
    keep = evaluation_sample(target_users)
    target_users, relevant = target_users[keep], [r for r, k in zip(relevant, keep, strict=True) if k]
    seen_users, seen = split_by_user(train, S.ITEM_ID)
    _, labels = split_by_user(train, S.LABEL)
    position = dict(zip(seen_users.tolist(), range(len(seen_users)), strict=True))
    grid = trigger_grid()
    recommended: list[list[np.ndarray]] = [[] for _ in grid]
    for user in target_users.tolist():
        items = seen[position[user]] if user in position else np.zeros(0, np.int64)
        user_labels = labels[position[user]] if user in position else np.zeros(0, np.int8)
        for g, scored in enumerate(i2i_scores_per_policy(item_ids, nbr_items, nbr_weights, items, user_labels, grid)):
            recommended[g].append(chain.top_k(*scored, TOPK, np.sort(items))[0])
    metrics = []
    for policy, lists in zip(grid, recommended, strict=True):
        m = topk_metrics(lists, relevant, TOPK)
        metrics.append({**policy.to_dict(), "recall": m["recall"], "ndcg": m["ndcg"]})
        log.info("validation: %s -> Recall@%d %.4f NDCG %.4f", policy, TOPK, m["recall"], m["ndcg"])
    best = max(range(len(grid)), key=lambda g: (metrics[g]["ndcg"], -g))
    return ValidationResult(grid[best], metrics)


def i2i_scores_per_policy(
    item_ids: np.ndarray,
    nbr_items: np.ndarray,
    nbr_weights: np.ndarray,
    seen: np.ndarray,
    seen_labels: np.ndarray,
    grid: list[chain.TriggerPolicy],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``chain.i2i_scores`` of one user under each policy of ``grid``, sharing one de-duplication of the
    neighbours of the longest trigger list (the serving code computes one policy; tests check equality)."""
    longest = max(p.max_triggers for p in grid)
    triggers = seen[-longest:]
    rows = np.minimum(np.searchsorted(item_ids, triggers), len(item_ids) - 1)
    known = item_ids[rows] == triggers if len(item_ids) else np.zeros(len(triggers), dtype=bool)
    nbr = np.where(known[:, None], nbr_items[rows], -1)  # (n_triggers, n_neighbors)
    weights = np.where(known[:, None], nbr_weights[rows], 0.0)  # (n_triggers, n_neighbors)
    age = np.repeat(np.arange(len(triggers) - 1, -1, -1), nbr.shape[1])  # (n_triggers * n_neighbors,)
    flat, flat_w = nbr.ravel(), weights.ravel()
    valid = flat >= 0
    out_items, inverse = np.unique(flat[valid], return_inverse=True)
    out = []
    for policy in grid:
        trigger_w = np.zeros(len(triggers), np.float32)
        n = min(policy.max_triggers, len(triggers))
        if n:
            trigger_w[len(triggers) - n :] = policy.weights(seen_labels)[-n:]
        contrib = (flat_w * np.repeat(trigger_w, nbr.shape[1]))[valid]
        in_range = (age < n)[valid]
        scores = np.bincount(inverse, weights=contrib, minlength=len(out_items)).astype(np.float32)
        reached = np.bincount(inverse, weights=in_range, minlength=len(out_items)) > 0
        out.append((out_items[reached], scores[reached]))
    return out


def item_to_item(paths: ArtifactPaths, config: ItemToItemConfig) -> dict[str, float]:
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    selection = select_trigger_policy(samples, config, paths)
    offline = samples[samples[S.SPLIT] != S.SPLIT_ONLINE]
    item_ids, weights = fit_ease(offline[[S.USER_ID, S.ITEM_ID]], config)
    table = neighbor_table(item_ids, weights, config.n_neighbors)
    del weights
    write_parquet(table, paths.item_neighbors_path)
    trigger_policy = selection.best
    write_json(trigger_policy.to_dict(), paths.i2i_params_path)
    index = ItemIndex.load(paths, with_vectors=False)
    users = UserStates(paths, with_vectors=False)
    recommender = channel_recommender(index, users, "i2i", TOPK, trigger_policy)
    metrics = evaluate_recommender(Holdout.from_samples(samples), recommender, desc="i2i")
    log.info("i2i@%d on the online holdout with %s: %s", TOPK, trigger_policy, metrics)
    outputs = {
        "n_items": len(item_ids),
        "n_rows": len(table),
        "i2i": metrics,
        "validation_by_trigger_policy": selection.metrics,
        **trigger_policy.to_dict(),
    }
    write_metadata(paths.recall_dir, "s3_item_to_item", outputs, config=config.to_dict(), dataset=dataset_name(paths))
    update_metrics(paths.metrics_path, {"topk": {"i2i": metrics}})
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_config_arguments(parser, ItemToItemConfig)
    args = parser.parse_args(argv)
    config = config_from_args(ItemToItemConfig, args)
    return run_stage("s3_item_to_item", args, lambda paths: item_to_item(paths, config))


if __name__ == "__main__":
    sys.exit(main())
