"""Stage evaluate/1: the whole chain on the online holdout, and the report.

Runs recall -> merge -> rank for every user with a positive in the online holdout, with the in-process
backends and the exported ONNX ranker (offline/evaluate/chain_eval.py), and writes the top-K figures of
each channel, the merged candidates and the final ranked list into reports/metrics.json, then
reports/report.md with PNG plots (top-K comparison, training curves), on validation and on the holdout:
every channel alone, the merged candidates (Recall@200), the ranked list and its lift over the best
single channel. Before that, the ranking policy (like weight and vector weight of the final score) is
selected on a validation setup that ends at the training split
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
from offline.evaluate.chain_eval import run_chain
from offline.evaluate.examples import append_example_users
from offline.evaluate.report import plot_curves, plot_topk, render_report
from offline.evaluate.validation import (
    permutation_importance,
    rank_lists,
    run_validation_chain,
    select_ranking_policy,
)

log = logging.getLogger(__name__)
LIKE_WEIGHT_GRID = (0.0, 0.5, 1.0)
VECTOR_WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
CHANNEL_ROWS = ("popularity", "term", "vector", "i2i")


def topk_report(paths: ArtifactPaths) -> dict[str, Any]:
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    holdout = Holdout.from_samples(samples)
    settings = load_settings({"data_dir": paths.data_dir})
    quotas = settings.chain_quotas
    triggers, _ = chain.read_chain_parameters(*paths.chain_params_paths)
    validation_run = run_validation_chain(paths, samples, quotas, triggers)
    policy, selection = select_ranking_policy(validation_run, TOPK, LIKE_WEIGHT_GRID, VECTOR_WEIGHT_GRID)
    log.info("ranking policy selected on validation: %s", policy)
    write_json(policy.to_dict(), paths.ranking_policy_path)
    validation_lists = rank_lists(validation_run.candidates, validation_run.like, policy, TOPK)
    validation = stage_metrics(validation_run.channel_lists, [c.items for c in validation_run.candidates],
                               validation_lists, validation_run.relevant)  # fmt: skip
    validation["permutation_importance_ndcg"] = permutation_importance(paths, validation_run, policy, TOPK)
    log.info("permutation importance on validation (NDCG@%d lost): %s", TOPK, validation["permutation_importance_ndcg"])
    run = run_chain(paths, holdout, quotas, TOPK)
    topk: dict[str, Any] = {"k": TOPK, **stage_metrics(run.channel_lists, run.merged, run.ranked, holdout.relevant)}
    topk["merged"]["mean_candidates"] = round(float(np.mean(run.n_candidates)), 1)
    for name in (*CHANNEL_ROWS, "merged", "ranked"):
        if name in topk:
            log.info("%-10s %s", name, topk[name])
    topk["validation"] = validation
    topk["policy"] = {**policy.to_dict(), "selected_on": "validation (test-split positives)"}
    metrics = update_metrics(paths.metrics_path, {"topk": topk, "ranking_policy_selection": selection})
    write_report(paths, metrics, selection)
    append_example_users(paths, holdout.user_ids, holdout.relevant, run.ranked)
    return topk


def stage_metrics(
    channel_lists: dict[str, list[np.ndarray]],
    merged: list[np.ndarray],
    ranked: list[np.ndarray],
    relevant: list[np.ndarray],
) -> dict[str, Any]:
    """What each stage adds: every channel alone (filled up with popularity, as it would be served), the
    merged candidates (Recall@50 in merge order, Recall@200), the ranked list, and its lift in NDCG@50
    over the best single channel."""
    out: dict[str, Any] = {}
    popular = channel_lists["popularity"]
    for name in CHANNEL_ROWS:
        lists = channel_lists.get(name, [])
        if any(len(items) for items in lists):
            filled = [fill_with(items, fallback, TOPK) for items, fallback in zip(lists, popular, strict=True)]
            out[name] = topk_metrics(filled, relevant, TOPK)
    out["merged"] = {
        **topk_metrics(merged, relevant, TOPK),
        "recall_at_k": MERGED_RECALL_K,
        f"recall_at_{MERGED_RECALL_K}": topk_metrics(merged, relevant, MERGED_RECALL_K)["recall"],
    }
    out["ranked"] = topk_metrics(ranked, relevant, TOPK)
    channels = [name for name in CHANNEL_ROWS if name in out]
    best = max(channels, key=lambda name: out[name]["ndcg"])
    out["best_channel"] = best
    out["ranked_lift_over_best_channel"] = round(out["ranked"]["ndcg"] / max(out[best]["ndcg"], 1e-12), 4)
    return out


def fill_with(items: np.ndarray, fallback: np.ndarray, k: int) -> np.ndarray:
    """``items`` then ``fallback`` items not already in it, cut at ``k``."""
    return np.concatenate([items[:k], fallback[~np.isin(fallback, items)]])[:k]


def write_report(paths: ArtifactPaths, metrics: dict[str, Any], selection: list[dict[str, float]]) -> None:
    plots = [plot_topk(metrics["topk"], paths.reports_dir / "topk.png").name]
    histories = {}
    if paths.model_dir.joinpath("training_history.json").exists():
        histories["ranker (DeepFM)"] = _epochs(read_json(paths.model_dir / "training_history.json"))
    recall_meta = paths.recall_dir / "metadata.json"
    if recall_meta.exists():
        vector_history = read_json(recall_meta).get("s2_vector_recall", {}).get("outputs", {}).get("history", [])
        histories["vector recall (validation Recall@50)"] = [
            {"epoch": h["epoch"], "val_auc": h["val_recall"]} for h in vector_history if "val_recall" in h
        ]
    plots.append(plot_curves(histories, paths.reports_dir / "training_curves.png").name)
    with atomic_path(paths.report_path) as tmp:
        tmp.write_text(render_report(metrics, selection, plots))
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
