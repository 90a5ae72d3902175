"""The human-readable report: Markdown with PNG plots, written beside reports/metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_exchange_center.artifacts import atomic_path  # noqa: E402

TOPK_ROWS = ("popularity", "term", "vector", "i2i", "merged", "ranked")


def plot_topk(topk: dict[str, Any], path: Path) -> Path:
    """Grouped bars of Recall, HitRate and NDCG at K for each channel and the final list."""
    rows = [r for r in TOPK_ROWS if r in topk]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.27
    for j, metric in enumerate(("recall", "hit_rate", "ndcg")):
        values = [topk[r][metric] for r in rows]
        bars = ax.bar([i + (j - 1) * width for i in range(len(rows))], values, width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(rows)), rows)
    ax.set_title(f"Top-{topk['k']} on the online holdout ({topk['ranked']['n_users']} users)")
    ax.legend()
    return _save(fig, path)


def plot_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Validation AUC per epoch of each trained model (the selected epoch is the maximum)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        if history:
            ax.plot([h["epoch"] for h in history], [h["val_auc"] for h in history], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC")
    ax.set_title("Training curves (model selection on the validation slice)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _stage_rows(topk: dict[str, Any]) -> list[str]:
    """What each stage adds, on validation and on the holdout: NDCG@K per stage, the ranked list's lift."""
    validation = topk.get("validation", {})
    lines = ["", "What each stage adds (NDCG, validation / holdout):", "", "| stage | validation | holdout |",
             "|---|---|---|"]  # fmt: skip
    for row in TOPK_ROWS:
        if row in topk:
            val = validation.get(row, {}).get("ndcg")
            lines.append(f"| {row} | {'-' if val is None else f'{val:.4f}'} | {topk[row]['ndcg']:.4f} |")
    best, val_lift = topk.get("best_channel"), validation.get("ranked_lift_over_best_channel", "-")
    lines.append(f"| ranked / best channel ({best}) | {val_lift} | {topk.get('ranked_lift_over_best_channel')} |")
    return lines


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def render_report(metrics: dict[str, Any], selection: list[dict[str, float]], plots: list[str]) -> str:
    """The Markdown report of one pipeline run."""
    split, topk = metrics.get("split", {}), metrics["topk"]
    lines = [
        f"# Pipeline report: {metrics.get('dataset', '?')}",
        "",
        "## Split",
        "",
        "| online | train | test | positive | negative |",
        "|---|---|---|---|---|",
        f"| {split.get('n_online')} | {split.get('n_train')} | {split.get('n_test')} "
        f"| {split.get('n_positive')} | {split.get('n_negative')} |",
        "",
        "## Models (AUC on the test split, scored once after selection on validation)",
        "",
        "| model | validation AUC | test AUC |",
        "|---|---|---|",
    ]
    for name in ("vector_recall", "rank"):
        part = metrics.get(name, {})
        lines.append(f"| {name} | {part.get('val_auc', '-')} | {part.get('test_auc', '-')} |")
    lines += [
        "",
        f"## Top-{topk['k']} on the online holdout",
        "",
        "Last 10 ratings per user, positives only; the user's offline items are never recommended.",
        "",
        "| list | Recall | HitRate | NDCG |",
        "|---|---|---|---|",
    ]
    for row in TOPK_ROWS:
        if row in topk:
            m = topk[row]
            lines.append(f"| {row} | {m['recall']:.4f} | {m['hit_rate']:.4f} | {m['ndcg']:.4f} |")
    lines += _stage_rows(topk)
    merged = topk.get("merged", {})
    policy = topk.get("policy", {})
    lines += [
        "",
        f"Merged candidates: Recall@{merged.get('recall_at_k', '?')} = {merged.get('recall_at_200', '-')}, "
        f"{merged.get('mean_candidates', '-')} candidates per user on average.",
    ]
    if policy.get("ranker_final"):
        lines += _ranker_final_lines(metrics.get("rank", {}).get("watch", {}), selection)
    else:
        lines += _blend_lines(policy, selection)
    lines += ["", "## Stage timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {sec} |" for stage, sec in metrics.get("timings_s", {}).items()]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _ranker_final_lines(watch: dict[str, Any], selection: list[dict[str, float]]) -> list[str]:
    validation = selection[0] if selection else {}
    return [
        "",
        "The final score is the DeepFM's output, p_watch x p_like ^ w: its like head learned on the rated items,",
        "its watch head on the recall candidates (with their channel evidence) of half of the validation users,",
        "labelled by what each user watched next; the epoch and w were selected on the other half's NDCG@50.",
        "",
        f"Selected: like weight w = {watch.get('like_weight')}, watch epoch {watch.get('best_epoch')}; fitted on "
        f"{watch.get('n_fit_rows')} candidate rows of {watch.get('n_fit_users')} users, selected on "
        f"{watch.get('n_selection_users')} users; validation (those users) Recall {validation.get('recall', '-')}, "
        f"NDCG {validation.get('ndcg', '-')}.",
    ]


def _blend_lines(policy: dict[str, Any], selection: list[dict[str, float]]) -> list[str]:
    lines = [
        "",
        "The final score is (i2i / best i2i + v x exp(vector - best vector) + prior) x P(like) ^ w; v and w are",
        "selected on validation (timeline ending at the training split, targets the test split's positives);",
        "the holdout is scored once with the selected policy.",
        "",
        f"Selected: like weight w = {policy.get('like_weight')}, vector weight v = {policy.get('vector_weight')}",
        "",
        "| vector weight v | like weight w | validation Recall | validation NDCG |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['vector_weight']} | {r['like_weight']} | {r['recall']:.4f} | {r['ndcg']:.4f} |" for r in selection
    ]
    return lines
