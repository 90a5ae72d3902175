"""Selections of the final-score policy on a validation setup that never sees the online holdout.

The validation setup (``offline/rank/candidates.py``) ends the timeline at the training split; the
targets are the positives of the test split. The same chain steps as serving produce candidates and
final lists. A ranker trained on the candidates with their evidence gives the final score itself; a
ranker of likes only is blended with the recall evidence by the policy selected here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.topk_metrics import topk_metrics
from offline.rank.candidates import CandidateSets, is_fit_user, validation_candidates
from offline.rank.scoring import load_session, score_candidates, score_encoded

log = logging.getLogger(__name__)


@dataclass
class ValidationRun:
    """The chain on the validation setup (``CandidateSets``: per target user, each channel's list and the
    merged candidates) and the ranker's score of every candidate. For a ranker that reads the recall
    evidence, only the users that did not fit its watch head (``is_fit_user``)."""

    sets: CandidateSets
    like: list[np.ndarray]  # the ranker's output per candidate (a like probability, or the served score)
    ranker_final: bool = False  # the ranker read the evidence: its output is the final score

    @property
    def relevant(self) -> list[np.ndarray]:
        return self.sets.relevant

    @property
    def channel_lists(self) -> dict[str, list[np.ndarray]]:
        return self.sets.channel_lists

    @property
    def candidates(self) -> list[chain.Candidates]:
        return self.sets.candidates


def run_validation_chain(
    paths: ArtifactPaths, samples: pd.DataFrame, quotas: dict[str, int], triggers: chain.TriggerPolicy
) -> ValidationRun:
    """Recall, merge and the ranker's scores for every user with a test-split positive, as of the train split."""
    spec = FeatureSpec.load(paths.feature_spec_path)
    sets = validation_candidates(paths, samples, quotas, triggers)
    if spec.n_evidence:
        sets = sets.subset(~is_fit_user(sets.target_users))
    item_features = read_parquet(paths.item_features_path, (S.ITEM_ID,))
    like = score_candidates(load_session(paths.onnx_path), spec, sets.user_features, item_features,
                            sets.target_users, sets.candidates)  # fmt: skip
    return ValidationRun(sets, like, bool(spec.n_evidence))


def rank_lists(
    candidates: list[chain.Candidates], like: list[np.ndarray], policy: chain.RankingPolicy, k: int
) -> list[np.ndarray]:
    """The final lists of ``policy`` over every user's candidates."""
    pairs = zip(candidates, like, strict=True)
    return [chain.rank_and_cut(c, chain.final_scores(c, p, policy), k)[0] for c, p in pairs]


def select_ranking_policy(
    run: ValidationRun, k: int, like_grid: tuple[float, ...], vector_grid: tuple[float, ...]
) -> tuple[chain.RankingPolicy, list[dict[str, float]]]:
    """The ranking policy with the best validation NDCG@k, and every policy's metrics. A ranker that read
    the recall evidence gives the final score itself (its like weight was selected when it was trained)."""
    if run.ranker_final:
        policy = chain.RankingPolicy(ranker_final=1)
        metrics = topk_metrics(rank_lists(run.candidates, run.like, policy, k), run.relevant, k)
        log.info("validation: %s -> %s", policy, metrics)
        return policy, [{"ranker_final": 1, **metrics}]
    if not any(len(lst) for lst in run.channel_lists["vector"]):
        vector_grid = (0.0,)
    results: list[dict[str, float]] = []
    for vector_weight in vector_grid:
        for like_weight in like_grid:
            policy = chain.RankingPolicy(like_weight=like_weight, vector_weight=vector_weight)
            metrics = topk_metrics(rank_lists(run.candidates, run.like, policy, k), run.relevant, k)
            results.append({"like_weight": like_weight, "vector_weight": vector_weight, **metrics})
            log.info("validation: %s -> %s", policy, metrics)
    best = max(results, key=lambda r: (r["ndcg"], -r["like_weight"], -r["vector_weight"]))
    return chain.RankingPolicy(like_weight=best["like_weight"], vector_weight=best["vector_weight"]), results


def permutation_importance(
    paths: ArtifactPaths, run: ValidationRun, policy: chain.RankingPolicy, k: int, seed: int = 0
) -> dict[str, float]:
    """NDCG@k lost on validation when one input of the served score is shuffled: for a ranker that reads
    the evidence, each group of its inputs (``ranker_importance``); otherwise each input of the blend,
    among each user's candidates: the item-to-item evidence, the vector evidence, the ranker's like
    probability, the channel prior (the rank in the proposing channel)."""
    if run.ranker_final:
        return ranker_importance(paths, run.sets, policy, k, seed)
    rng = np.random.default_rng(seed)

    def ndcg(candidates: list[chain.Candidates], like: list[np.ndarray]) -> float:
        return float(topk_metrics(rank_lists(candidates, like, policy, k), run.relevant, k)["ndcg"])

    base = ndcg(run.candidates, run.like)

    def shuffled(c: chain.Candidates, field_name: str) -> chain.Candidates:
        values = getattr(c, field_name)
        return dataclasses.replace(c, **{field_name: values[rng.permutation(len(values))]}) if len(values) else c

    out: dict[str, float] = {}
    for name, field_name in (("i2i", "i2i_score"), ("vector", "vector_score"), ("channel_prior", "rank_in_channel")):
        candidates = [shuffled(c, field_name) for c in run.candidates]
        out[name] = round(base - ndcg(candidates, run.like), 5)
    out["ranker_like"] = round(base - ndcg(run.candidates, [p[rng.permutation(len(p))] for p in run.like]), 5)
    return out


def input_groups(spec: FeatureSpec) -> dict[str, tuple[list[int], list[int]]]:
    """The ranker's inputs in groups a reader knows: (sparse positions, dense positions) per group."""
    sparse_of = {f.name: j for j, f in enumerate(spec.categorical)}
    demographics = [j for j, f in enumerate(spec.categorical) if f.source == "user" and f.name != S.USER_ID]
    groups: dict[str, tuple[list[int], list[int]]] = {
        "user_id": ([sparse_of[S.USER_ID]], []),
        "user_demographics": (demographics, []),
        "user_history_features": ([], [j for j, f in enumerate(spec.dense) if f.source == "user"]),
        "item_id": ([sparse_of[S.ITEM_ID]], []),
        "item_genres": ([], [j for j, f in enumerate(spec.dense) if f.source == "item"]),
    }
    evidence = [(j, f.name) for j, f in enumerate(spec.dense) if f.source == "candidate"]
    for group in ("i2i", "vector", "channel"):
        groups[f"evidence_{group}"] = ([], [j for j, name in evidence if name.startswith(f"ev_{group}")])
    return {name: cols for name, cols in groups.items() if cols[0] or cols[1]}


def ranker_importance(
    paths: ArtifactPaths, sets: CandidateSets, policy: chain.RankingPolicy, k: int, seed: int = 0
) -> dict[str, float]:
    """NDCG@k lost on validation when one group of the ranker's inputs is shuffled across all rows."""
    spec = FeatureSpec.load(paths.feature_spec_path)
    item_features = read_parquet(paths.item_features_path, (S.ITEM_ID,))
    session = load_session(paths.onnx_path)
    sparse, dense = sets.encode(spec, item_features)
    splits = np.cumsum(sets.sizes)[:-1]
    rng = np.random.default_rng(seed)

    def ndcg(sparse_in: np.ndarray, dense_in: np.ndarray) -> float:
        scores = np.split(score_encoded(session, sparse_in, dense_in), splits)
        return float(topk_metrics(rank_lists(sets.candidates, scores, policy, k), sets.relevant, k)["ndcg"])

    base = ndcg(sparse, dense)
    out: dict[str, float] = {}
    for name, (sparse_cols, dense_cols) in input_groups(spec).items():
        order = rng.permutation(len(sparse))
        shuffled_sparse, shuffled_dense = sparse.copy(), dense.copy()
        shuffled_sparse[:, sparse_cols] = sparse[order][:, sparse_cols]
        shuffled_dense[:, dense_cols] = dense[order][:, dense_cols]
        out[name] = round(base - ndcg(shuffled_sparse, shuffled_dense), 5)
        log.info("permutation importance %s: %.5f NDCG@%d", name, out[name], k)
    return out
