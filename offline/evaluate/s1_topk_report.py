"""Stage evaluate/1: the whole chain on the online holdout, and the report.

Runs recall -> merge -> rank for every user with a positive in the online holdout, with the in-process
backends and the exported ONNX ranker (offline/evaluate/chain_eval.py), and writes the top-K figures of
each channel, the merged candidates and the final ranked list into reports/metrics.json, then
reports/report.md with PNG plots (top-K comparison, training curves). Before that, the like weight of
the final score is selected on a validation setup that ends at the training split
(offline/evaluate/validation.py) and written into rank/ranking_policy.json (this stage is its only
writer), which a published version carries to the online service: run this stage before publishing.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import atomic_path, read_json, read_parquet, update_metrics, write_json
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import load_settings
from data_exchange_center.topk_metrics import topk_metrics
from offline.common.holdout import MERGED_RECALL_K, TOPK, Holdout
from offline.common.stage import run_stage, stage_parser
from offline.evaluate.chain_eval import chain_quotas, run_chain
from offline.evaluate.examples import append_example_users
from offline.evaluate.report import plot_curves, plot_topk, render_report
from offline.evaluate.validation import select_like_weight

log = logging.getLogger(__name__)
LIKE_WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0)


def topk_report(paths: ArtifactPaths) -> dict[str, Any]:
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    holdout = Holdout.from_samples(samples)
    settings = load_settings({"data_dir": paths.data_dir})
    quotas = chain_quotas(settings)
    triggers, _ = chain.read_chain_parameters(*paths.chain_params_paths)
    like_weight, validation = select_like_weight(paths, samples, quotas, triggers, TOPK, LIKE_WEIGHT_GRID)
    log.info(
        "like weight %.2f selected on validation (NDCG@%d %.4f)", like_weight, TOPK, validation[like_weight]["ndcg"]
    )
    write_json(chain.RankingPolicy(like_weight=like_weight).to_dict(), paths.ranking_policy_path)
    run = run_chain(paths, holdout, quotas, TOPK, LIKE_WEIGHT_GRID)
    topk: dict[str, Any] = {"k": TOPK}
    popular = run.channel_lists["popularity"]
    for name, lists in run.channel_lists.items():
        if any(len(items) for items in lists):  # each channel filled up with popularity, as it would be served
            filled = [fill_with(items, fallback, TOPK) for items, fallback in zip(lists, popular, strict=True)]
            topk[name] = topk_metrics(filled, holdout.relevant, TOPK)
    topk["merged"] = {
        **topk_metrics(run.merged, holdout.relevant, TOPK),
        "recall_at_k": MERGED_RECALL_K,
        f"recall_at_{MERGED_RECALL_K}": topk_metrics(run.merged, holdout.relevant, MERGED_RECALL_K)["recall"],
        "mean_candidates": round(float(np.mean(run.n_candidates)), 1),
    }
    topk["ranked"] = topk_metrics(run.ranked, holdout.relevant, TOPK)
    sensitivity = {w: topk_metrics(lists, holdout.relevant, TOPK) for w, lists in run.ranked_by_like_weight.items()}
    for name in ("popularity", "term", "vector", "i2i", "merged", "ranked"):
        if name in topk:
            log.info("%-10s %s", name, topk[name])
    topk["policy"] = {"like_weight": like_weight, "selected_on": "validation (test-split positives)"}
    metrics = update_metrics(paths.metrics_path, {"topk": topk})
    write_report(paths, metrics, sensitivity, validation)
    append_example_users(paths, holdout.user_ids, holdout.relevant, run.ranked)
    return topk


def fill_with(items: np.ndarray, fallback: np.ndarray, k: int) -> np.ndarray:
    """``items`` then ``fallback`` items not already in it, cut at ``k``."""
    return np.concatenate([items[:k], fallback[~np.isin(fallback, items)]])[:k]


def write_report(
    paths: ArtifactPaths,
    metrics: dict[str, Any],
    sensitivity: dict[float, dict[str, float]],
    validation: dict[float, dict[str, float]],
) -> None:
    plots = [plot_topk(metrics["topk"], paths.reports_dir / "topk.png").name]
    histories = {}
    if paths.model_dir.joinpath("training_history.json").exists():
        histories["ranker (DeepFM)"] = _epochs(read_json(paths.model_dir / "training_history.json"))
    recall_meta = paths.recall_dir / "metadata.json"
    if recall_meta.exists():
        histories["vector recall (like head)"] = (
            read_json(recall_meta).get("s2_vector_recall", {}).get("outputs", {}).get("history", [])
        )
    plots.append(plot_curves(histories, paths.reports_dir / "training_curves.png").name)
    with atomic_path(paths.report_path) as tmp:
        tmp.write_text(render_report(metrics, sensitivity, validation, plots))
    log.info("wrote %s and %s", paths.metrics_path, paths.report_path)


def _epochs(history: Any) -> list[dict[str, float]]:
    """Per-epoch records with ``epoch`` and ``val_auc`` from the ranker's training history."""
    records = history.get("epochs", history) if isinstance(history, dict) else history
    return [r for r in records if isinstance(r, dict) and "val_auc" in r and "epoch" in r]


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__ or "").parse_args(argv)
    return run_stage("s1_topk_report", args, topk_report)


if __name__ == "__main__":
    sys.exit(main())
