"""Stage recall/3: the item-to-item channel (EASE), kept as a top-N neighbour table, and evaluated.

Reads preprocess/samples.parquet and the artifacts of stage recall/1. At serving time the user's most
recent seen items are the triggers (liked ones weigh 1, others 0.3; ``data_exchange_center/chain.py``)
and candidates are ranked by summed neighbour weights. How many recent items to use is selected on
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
from data_exchange_center.topk_metrics import topk_metrics
from offline.common.dataset import dataset_name
from offline.common.holdout import TOPK, Holdout, evaluate_recommender
from offline.common.stage import add_config_arguments, config_from_args, run_stage, stage_parser
from offline.common.user_states import UserStates, channel_recommender, split_by_user
from offline.recall.item_to_item import ItemToItemConfig, fit_ease, neighbor_table

log = logging.getLogger(__name__)
TRIGGER_GRID = (5, 10, 20, 30, 50, 100)


@dataclass(frozen=True)
class ValidationResult:
    best_max_triggers: int
    recall_by_max_triggers: dict[int, float]


def select_max_triggers(samples: pd.DataFrame, config: ItemToItemConfig, paths: ArtifactPaths) -> ValidationResult:
    """Recall@K of the i2i channel per trigger count: EASE on the train split, targets the test positives.
    The train-split neighbour table is kept for later selections on the same validation setup."""
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    item_ids, weights = fit_ease(train[[S.USER_ID, S.ITEM_ID]], config)
    table = neighbor_table(item_ids, weights, config.n_neighbors)
    del weights
    write_parquet(table, paths.validation_neighbors_path)
    nbr_items, nbr_weights = neighbor_matrix(table, item_ids)
    targets = samples[(samples[S.SPLIT] == S.SPLIT_TEST) & (samples[S.LABEL] == 1)]
    target_users, relevant = split_by_user(targets, S.ITEM_ID)
    seen_users, seen = split_by_user(train, S.ITEM_ID)
    _, labels = split_by_user(train, S.LABEL)
    position = dict(zip(seen_users.tolist(), range(len(seen_users)), strict=True))
    recall: dict[int, float] = {}
    for max_triggers in TRIGGER_GRID:
        recommended = []
        for user in target_users.tolist():
            items = seen[position[user]] if user in position else np.zeros(0, np.int64)
            rows = np.searchsorted(item_ids, items[-max_triggers:])
            rows = np.minimum(rows, len(item_ids) - 1)
            policy = chain.TriggerPolicy(max_triggers=max_triggers)
            triggers = policy.weights(labels[position[user]]) if user in position else np.zeros(0)
            scored = chain.i2i_scores(nbr_items[rows], nbr_weights[rows], triggers.astype(np.float32))
            recommended.append(chain.top_k(*scored, TOPK, np.sort(items))[0])
        recall[max_triggers] = topk_metrics(recommended, relevant, TOPK)["recall"]
        log.info("validation: %d triggers -> Recall@%d %.4f", max_triggers, TOPK, recall[max_triggers])
    return ValidationResult(max(recall, key=lambda m: (recall[m], -m)), recall)


def item_to_item(paths: ArtifactPaths, config: ItemToItemConfig) -> dict[str, float]:
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    selection = select_max_triggers(samples, config, paths)
    offline = samples[samples[S.SPLIT] != S.SPLIT_ONLINE]
    item_ids, weights = fit_ease(offline[[S.USER_ID, S.ITEM_ID]], config)
    table = neighbor_table(item_ids, weights, config.n_neighbors)
    del weights
    write_parquet(table, paths.item_neighbors_path)
    trigger_policy = chain.TriggerPolicy(max_triggers=selection.best_max_triggers)
    write_json(trigger_policy.to_dict(), paths.i2i_params_path)
    index = ItemIndex.load(paths, with_vectors=False)
    users = UserStates(paths, with_vectors=False)
    recommender = channel_recommender(index, users, "i2i", TOPK, trigger_policy)
    metrics = evaluate_recommender(Holdout.from_samples(samples), recommender, desc="i2i")
    log.info("i2i@%d on the online holdout with %d triggers: %s", TOPK, selection.best_max_triggers, metrics)
    outputs = {
        "n_items": len(item_ids),
        "n_rows": len(table),
        "i2i": metrics,
        "validation_recall_by_max_triggers": selection.recall_by_max_triggers,
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
