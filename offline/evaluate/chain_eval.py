"""The whole online chain, run offline over the holdout users with the in-process backends.

Per user: recall every channel, merge (``data_exchange_center.chain``), score all candidates with the
exported ONNX ranker on the serving user features, final score and cut: the steps and data the online
service uses, so the evaluated list is the served list (``online/main/s2_client.py --replay`` checks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.paths import ArtifactPaths
from offline.common.holdout import Holdout
from offline.common.user_states import UserStates
from offline.rank.scoring import load_session, score_candidates


@dataclass
class ChainRun:
    """What the chain produced for each holdout user."""

    channel_lists: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per channel, per user
    merged: list[np.ndarray] = field(default_factory=list)  # merged candidates, merge order
    ranked: list[np.ndarray] = field(default_factory=list)  # the final list (size = max quota)
    ranked_by_like_weight: dict[float, list[np.ndarray]] = field(default_factory=dict)
    n_candidates: list[int] = field(default_factory=list)


def run_chain(
    paths: ArtifactPaths,
    holdout: Holdout,
    quotas: dict[str, int],
    size: int,
    like_weights: tuple[float, ...] = (),
) -> ChainRun:
    """Run the chain for every holdout user; also rank with each of ``like_weights`` (a sensitivity check)."""
    triggers, policy = chain.read_chain_parameters(*paths.chain_params_paths)
    index, users = ItemIndex.load(paths), UserStates(paths)
    run = ChainRun(channel_lists={name: [] for name in chain.CHANNELS})
    candidates_per_user = []
    for user_id in tqdm(holdout.user_ids.tolist(), desc="recall", mininterval=2, leave=False):
        results, i2i_all = chain.recall_channels(index, users.get(user_id), quotas, triggers)
        for name in chain.CHANNELS:
            run.channel_lists[name].append(results.get(name, (np.zeros(0, np.int64), None))[0])
        candidates = chain.merge_candidates(results, *i2i_all)
        candidates_per_user.append(candidates)
        run.merged.append(candidates.items)
        run.n_candidates.append(len(candidates.items))
    like = _score_candidates(paths, holdout.user_ids, candidates_per_user)
    for weight in (policy.like_weight, *like_weights):
        weighted = dataclasses.replace(policy, like_weight=weight)
        lists = [
            chain.rank_and_cut(c, chain.final_scores(c, p, weighted), size)[0]
            for c, p in zip(candidates_per_user, like, strict=True)
        ]
        run.ranked_by_like_weight[weight] = lists
    run.ranked = run.ranked_by_like_weight[policy.like_weight]
    return run


def _score_candidates(
    paths: ArtifactPaths, user_ids: np.ndarray, candidates: list[chain.Candidates]
) -> list[np.ndarray]:
    """The ranker's score of every (user, candidate) pair, one batch for all users."""
    spec = FeatureSpec.load(paths.feature_spec_path)
    user_features = read_parquet(paths.user_features_path, (S.USER_ID,))
    item_features = read_parquet(paths.item_features_path, (S.ITEM_ID,))
    return score_candidates(load_session(paths.onnx_path), spec, user_features, item_features, user_ids, candidates)
