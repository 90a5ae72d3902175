"""Stage recall/2: the vector channel's factorization model, selected on validation, vectors exported.

Reads preprocess/samples.parquet and preprocess/item_terms.parquet (the catalogue). Fits the two-head
factorization model (offline/recall/factorization.py) on the training period minus its last 10%
(validation), picks the epoch with the best validation AUC, scores the test split once (test AUC),
then refits on all offline impressions with that many epochs and writes recall/user_vectors.npz and
recall/item_vectors.npz (ids, vectors; inner product).
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet, update_metrics, write_metadata, write_npz
from data_exchange_center.paths import ArtifactPaths
from offline.common.dataset import dataset_name
from offline.common.metrics import roc_auc, validation_mask
from offline.common.stage import add_config_arguments, config_from_args, run_stage, stage_parser
from offline.recall.factorization import (
    FactorizationConfig,
    Interactions,
    TwoHeadFactorization,
    predict_like,
    train_factorization,
)

log = logging.getLogger(__name__)
VAL_FRACTION = 0.1


def interactions(rows: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> Interactions:
    return Interactions(
        users=np.searchsorted(user_ids, rows[S.USER_ID].to_numpy()).astype(np.int64),
        items=np.searchsorted(item_ids, rows[S.ITEM_ID].to_numpy()).astype(np.int64),
        ratings=rows[S.RATING].to_numpy(np.float32),
    )


def vector_recall(paths: ArtifactPaths, config: FactorizationConfig) -> dict[str, object]:
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    item_ids = np.sort(read_parquet(paths.item_terms_path, (S.ITEM_ID,))[S.ITEM_ID].to_numpy(np.int64))
    user_ids = np.unique(samples[S.USER_ID].to_numpy())
    train = samples[samples[S.SPLIT] == S.SPLIT_TRAIN]
    is_val = validation_mask(train, VAL_FRACTION)
    fit, val = interactions(train[~is_val], user_ids, item_ids), interactions(train[is_val], user_ids, item_ids)
    val_labels = train[S.LABEL].to_numpy()[is_val]
    history: list[dict[str, float]] = []
    best: dict[str, object] = {"auc": -1.0}

    def on_epoch(epoch: int, model: TwoHeadFactorization, loss: float) -> None:
        auc = roc_auc(val_labels, predict_like(model, val.users, val.items))
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 6), "val_auc": round(auc, 6)})
        log.info("epoch %d: train loss %.4f, validation AUC %.4f", epoch + 1, loss, auc)
        if auc > float(best["auc"]):  # type: ignore[arg-type]
            best.update(auc=auc, epoch=epoch + 1, state={k: v.clone() for k, v in model.state_dict().items()})

    model = train_factorization(fit, len(user_ids), len(item_ids), config, config.epochs, on_epoch)
    model.load_state_dict(best["state"])  # type: ignore[arg-type]
    test = samples[samples[S.SPLIT] == S.SPLIT_TEST]
    test_i = interactions(test, user_ids, item_ids)
    test_auc = roc_auc(test[S.LABEL].to_numpy(), predict_like(model, test_i.users, test_i.items))
    log.info("selected epoch %d (validation AUC %.4f); test AUC %.4f", best["epoch"], best["auc"], test_auc)
    offline_rows = samples[samples[S.SPLIT] != S.SPLIT_ONLINE]
    offline_i = interactions(offline_rows, user_ids, item_ids)
    final = train_factorization(offline_i, len(user_ids), len(item_ids), config, int(best["epoch"]))  # type: ignore[call-overload]
    user_vectors, item_vectors = final.export_vectors(np.bincount(offline_i.items, minlength=len(item_ids)) > 0)
    write_npz(paths.user_vectors_path, ids=user_ids, vectors=user_vectors)
    write_npz(paths.item_vectors_path, ids=item_ids, vectors=item_vectors)
    result = {"test_auc": round(test_auc, 6), "val_auc": round(float(best["auc"]), 6), "best_epoch": best["epoch"]}  # type: ignore[arg-type]
    write_metadata(
        paths.recall_dir,
        "s2_vector_recall",
        {**result, "dim": user_vectors.shape[1], "history": history},
        config=config.to_dict(),
        dataset=dataset_name(paths),
    )
    update_metrics(paths.metrics_path, {"vector_recall": result})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_config_arguments(parser, FactorizationConfig)
    args = parser.parse_args(argv)
    config = config_from_args(FactorizationConfig, args)
    return run_stage("s2_vector_recall", args, lambda paths: vector_recall(paths, config))


if __name__ == "__main__":
    sys.exit(main())
