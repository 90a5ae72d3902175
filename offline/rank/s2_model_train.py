"""Stage rank/2: train the DeepFM ranker, select it on validation, score the test split once, export ONNX.

Reads rank/feature_spec.json, rank/train.parquet and rank/test.parquet. The like head learns on the
rated items: the last 10% of each user's training impressions is the validation slice; early stopping
on validation AUC selects the number of epochs, and the model is retrained on every training row for
that many epochs (``--no-refit`` keeps the selected model instead). That model scores the test split
once (the like AUC). When the feature spec carries the candidates' recall evidence, the watch head then
learns on the recall candidates of the validation setup (offline/rank/candidates.py, watch.py: the
recall stages' validation neighbours, item vectors and user tower), and the exported model serves
``p_watch * p_like ** w``. Writes rank/model/model.pt (state dict),
model_args.json (everything needed to rebuild the model), training_history.json, model.onnx (checked
against PyTorch with ONNX Runtime on 1,000 test rows) and reference_scores.parquet (PyTorch scores of
the first test rows, for the offline-to-online check).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pyarrow
import pyarrow.parquet as pq
import torch

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import (
    ArtifactError,
    atomic_path,
    read_parquet,
    read_parquet_blocks,
    update_metrics,
    write_json,
    write_metadata,
    write_parquet,
)
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import load_settings
from data_exchange_center.topk_metrics import hash_order
from offline.common.dataset import dataset_name
from offline.common.stage import add_config_arguments, config_from_args, run_stage, stage_parser
from offline.rank.candidates import validation_candidates
from offline.rank.deepfm import DeepFM, export_onnx
from offline.rank.scoring import load_session, score_encoded
from offline.rank.train import EncodedRows, TrainConfig, encode_rows, evaluate, train_ranker
from offline.rank.watch import WatchResult, train_watch_head

log = logging.getLogger(__name__)
N_REFERENCE_ROWS = 2_000
N_ONNX_CHECK_ROWS = 1_000
ONNX_TOLERANCE = 1e-5


def model_train(paths: ArtifactPaths, config: TrainConfig) -> dict[str, float]:
    spec = FeatureSpec.load(paths.feature_spec_path)
    train_columns = (S.USER_ID, S.ITEM_ID, S.LABEL, S.SEQ, *spec.row_columns)
    users = training_users(paths.rank_train_path, config.max_train_rows)
    trained = train_ranker(spec, read_rows(paths.rank_train_path, train_columns, users), config)  # frees the frame
    watch = train_watch(paths, trained.model, spec, config) if spec.n_evidence else None
    test = read_rows(paths.rank_test_path, (S.LABEL, *spec.row_columns), users)
    test_rows = encode_rows(spec, test, spec.reference_evidence(np.arange(len(test))))
    reference_rows = test_rows if users is None else first_test_rows(paths, spec)  # test_rows start with them
    test_metrics = evaluate(trained.model, test_rows, config.eval_batch_size)  # the one look at the test split
    log.info("selected epoch %d (validation AUC %.4f)%s; test AUC %.4f", trained.selection.best_epoch,
             trained.selection.best_val_auc, ", refit on all training rows" if config.refit else "",
             test_metrics["auc"])  # fmt: skip
    save_model(paths, trained.model, config, spec)
    write_json(trained.history_record(), paths.model_dir / "training_history.json")
    export_and_check(paths, trained.model, reference_rows)
    summary: dict[str, Any] = {
        "test_auc": round(test_metrics["auc"], 6),
        "val_auc": round(trained.selection.best_val_auc, 6),
        "n_features": spec.n_features,
        "best_epoch": trained.selection.best_epoch,
        "train_seconds": round(trained.train_seconds + (watch.train_seconds if watch else 0.0), 1),
    }
    if watch is not None:
        summary["watch"] = watch.summary()
        write_json({"selection": watch.selection, **watch.summary()}, paths.model_dir / "watch_selection.json")
    write_metadata(paths.model_dir, "s2_model_train", summary, config=vars_of(config), dataset=dataset_name(paths))
    update_metrics(paths.metrics_path, {"rank": summary})
    return summary


def train_watch(paths: ArtifactPaths, model: DeepFM, spec: FeatureSpec, config: TrainConfig) -> WatchResult:
    """The watch head on the recall candidates of the validation setup (the recall stages' outputs)."""
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    settings = load_settings({"data_dir": paths.data_dir})
    triggers, _ = chain.read_chain_parameters(*paths.chain_params_paths)
    sets = validation_candidates(paths, samples, settings.chain_quotas, triggers)
    del samples
    item_features = read_parquet(paths.item_features_path, (S.ITEM_ID,))
    return train_watch_head(model, sets, spec, item_features, config)


def training_users(path: Path, max_rows: int) -> np.ndarray | None:
    """The users the ranker learns and is tested on: all (None) when the training table has at most
    ``max_rows`` rows; else whole users in ``hash_order`` (a stable sample) while their rows fit."""
    user_ids = pq.read_table(path, columns=[S.USER_ID]).column(0).to_numpy()
    if len(user_ids) <= max_rows:
        return None
    ids, counts = np.unique(user_ids, return_counts=True)
    order = hash_order(ids)
    n_users = int(np.searchsorted(np.cumsum(counts[order]), max_rows, side="right"))
    log.info("training on %d of %d users (%d of %d rows: max_train_rows)", n_users, len(ids),
             int(counts[order[:n_users]].sum()), len(user_ids), )  # fmt: skip
    return np.sort(ids[order[:n_users]])


def first_test_rows(paths: ArtifactPaths, spec: FeatureSpec) -> EncodedRows:
    """The first rows of rank/test.parquet, encoded: the rows of the reference scores (the check stage's)."""
    n_rows = min(N_REFERENCE_ROWS, pq.ParquetFile(paths.rank_test_path).metadata.num_rows)
    head = next(read_parquet_blocks(paths.rank_test_path, [n_rows], [S.LABEL, *spec.row_columns]))
    return encode_rows(spec, head, spec.reference_evidence(np.arange(n_rows)))


def read_rows(path: Path, columns: tuple[str, ...], users: np.ndarray | None = None) -> pd.DataFrame:
    """Read a feature table (the rows of ``users`` only, when given, in file order) and hand Arrow's read
    buffers back to the system (~0.4 GiB for ML-1M train)."""
    rows = read_parquet(path, columns, None if users is None else [(S.USER_ID, "in", users.tolist())])
    pyarrow.default_memory_pool().release_unused()
    return rows


def vars_of(config: TrainConfig) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()}


def save_model(paths: ArtifactPaths, model: DeepFM, config: TrainConfig, spec: FeatureSpec) -> None:
    with atomic_path(paths.model_weights_path) as tmp:
        torch.save(model.state_dict(), tmp)
    args = {"ranker": model.config.to_dict(), "n_sparse": len(spec.categorical), "n_dense": len(spec.dense),
            "columns": spec.columns, "train_config": vars_of(config)}  # fmt: skip
    write_json(args, paths.model_args_path)


def export_and_check(paths: ArtifactPaths, model: DeepFM, test_rows: EncodedRows) -> None:
    """Export ONNX, check it, compare ONNX Runtime with PyTorch, write the PyTorch reference scores (of the
    first rows of rank/test.parquet: ``test_rows`` starts with them)."""
    export_onnx(model, paths.onnx_path)
    proto = onnx.load(str(paths.onnx_path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ArtifactError(f"{paths.onnx_path} refers to external weight files; it must be one self-contained file")
    onnx.checker.check_model(proto, full_check=True)
    n = min(N_REFERENCE_ROWS, len(test_rows))
    with torch.no_grad():  # the served score (with the reference evidence for a ranker that reads it)
        torch_scores = model(test_rows.sparse[:n], test_rows.dense[:n])[:, 0].numpy()
    m = min(N_ONNX_CHECK_ROWS, n)
    sparse = test_rows.sparse[:m].numpy()
    dense = test_rows.dense[:m].numpy()
    onnx_scores = score_encoded(load_session(paths.onnx_path), sparse, dense)
    worst = float(np.abs(onnx_scores - torch_scores[:m]).max())
    if worst > ONNX_TOLERANCE:
        raise ArtifactError(f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {ONNX_TOLERANCE}) on {m} test rows")
    log.info("ONNX Runtime equals PyTorch on %d test rows (max difference %.2e)", m, worst)
    write_parquet(pd.DataFrame({"row": np.arange(n, dtype=np.int64), "score": torch_scores.astype(np.float32)}),
                  paths.reference_scores_path)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)
    config = config_from_args(TrainConfig, args)
    return run_stage("s2_model_train", args, lambda paths: model_train(paths, config))


if __name__ == "__main__":
    sys.exit(main())
