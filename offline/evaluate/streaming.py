"""The streaming protocol offline: the served chain walked over each holdout user's online ratings.

For each selected user (``data_exchange_center.streaming.holdout_walks``) and each online rating in
time order, the list is computed from the user's state (``static``: the published state; ``live``: the
published state with the earlier online ratings applied as events by
``data_exchange_center.events.apply_events``, the genre terms of the new recent window
(``events.recent_terms``) and the user vector computed again from the new recent items by the exported
user tower, as the service does at request time), with the chain steps the service runs
(``data_exchange_center.chain``) and the exported ONNX ranker on the serving user features. The
figures are next-item HitRate/NDCG/MRR over the positive ratings, per experiment variant too
(``data_exchange_center.experiments``): ``online/main/s2_client.py --replay --stream`` walks the
running service the same way and compares.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from data_exchange_center import chain
from data_exchange_center import model_signature as sig
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_json, read_npz, read_parquet
from data_exchange_center.events import apply_events, recent_terms
from data_exchange_center.experiments import Variant, assign_variant, parse_variants
from data_exchange_center.feature_spec import FeatureSpec, encode_recent_items
from data_exchange_center.item_catalog import ItemCatalog, catalog_from_artifacts
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import Settings
from data_exchange_center.streaming import MODES, STREAM_K, UserWalk, holdout_walks, next_item_metrics
from data_exchange_center.user_history import encoded_history_row, table_rows
from offline.common.user_states import UserStates
from offline.rank.scoring import load_session, score_candidates

USERS_PER_BATCH = 200  # users whose candidates are scored in one ONNX batch (bounds memory)


@dataclass
class StreamTarget:
    userid: int
    variant: str
    target: int
    candidates: chain.Candidates
    policy: chain.RankingPolicy
    user_dense: np.ndarray | None = None  # (1, m_u) encoded history features after the live events


def streaming_report(paths: ArtifactPaths, settings: Settings, every: int = 1, k: int = STREAM_K) -> dict[str, Any]:
    """Static and live next-item figures (overall and per variant) on every ``every``-th holdout user."""
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    walks = holdout_walks(samples, every)
    variants = parse_variants(settings.experiment_variants)
    triggers, base_policy = chain.read_chain_parameters(*paths.chain_params_paths)
    walker = _Walker(paths, settings.chain_quotas, triggers, k)
    report: dict[str, Any] = {"k": k, "every": every, "n_users": len(walks), "variants": [v.name for v in variants]}
    for mode in MODES:
        lists, targets, names = walker.walk(walks, mode == "live", variants, base_policy, settings.experiment_salt)
        report[mode] = next_item_metrics(lists, targets, k)
        report[mode]["by_variant"] = {
            v.name: next_item_metrics(
                [x for x, n in zip(lists, names, strict=True) if n == v.name], targets[np.array(names) == v.name], k
            )  # fmt: skip
            for v in variants
        }
    static, live = report["static"]["hit_rate"], report["live"]["hit_rate"]
    report["live_over_static_hit_rate"] = round(live / static, 4) if static else None
    return report


@dataclass(frozen=True)
class UserTowerRunner:
    """The vector model's user side by ONNX Runtime on the exported file, with the serving encoding."""

    session: Any
    vocab_ids: np.ndarray
    window: int

    @classmethod
    def load(cls, paths: ArtifactPaths) -> UserTowerRunner | None:
        if not paths.user_tower_onnx_path.exists():
            return None
        vocab = read_npz(paths.item_vectors_path, (S.VECTOR_IDS,))[S.VECTOR_IDS].astype(np.int64)
        window = int(read_json(paths.user_tower_args_path)["window"])
        return cls(load_session(paths.user_tower_onnx_path, n_threads=1), vocab, window)  # as the service runs it

    def with_vector(self, state: chain.UserState) -> chain.UserState:
        if len(state.seen) == 0:
            return state
        items, liked = encode_recent_items(state.seen, state.seen_labels, self.vocab_ids, self.window)
        vector = np.asarray(self.session.run([sig.USER_TOWER_OUTPUT], sig.tower_inputs(items, liked))[0], np.float32)
        vector = vector.reshape(-1)
        return dataclasses.replace(state, vector=vector)


class _Walker:
    def __init__(self, paths: ArtifactPaths, quotas: dict[str, int], triggers: chain.TriggerPolicy, k: int) -> None:
        self.index, self.users = ItemIndex.load(paths), UserStates(paths)
        self.quotas = {**quotas, "popularity": max(quotas.get("popularity", 0), k)}  # as the service does
        self.triggers, self.k = triggers, k
        self.spec = FeatureSpec.load(paths.feature_spec_path)
        self.user_features = read_parquet(paths.user_features_path, (S.USER_ID,))
        self.item_features = read_parquet(paths.item_features_path, (S.ITEM_ID,))
        by_id = self.item_features.sort_values(S.ITEM_ID)
        self.item_ids, self.item_dense = by_id[S.ITEM_ID].to_numpy(), self.spec.encode_items(by_id)[1]  # (n, m_i)
        self.session = load_session(paths.onnx_path)
        self.tower = UserTowerRunner.load(paths)
        self.catalog = ItemCatalog.from_frame(catalog_from_artifacts(paths))  # genres: the terms after events

    def walk(
        self, walks: list[UserWalk], live: bool, variants: list[Variant], policy: chain.RankingPolicy, salt: str
    ) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
        """The list served before every positive step, its target and the user's variant."""
        lists: list[np.ndarray] = []
        targets: list[int] = []
        names: list[str] = []
        for start in tqdm(range(0, len(walks), USERS_PER_BATCH), desc="live" if live else "static", leave=False):
            chunk = walks[start : start + USERS_PER_BATCH]
            batch = [t for w in chunk for t in self._targets(w, live, variants, policy, salt)]
            lists += self._rank(batch)
            targets += [t.target for t in batch]
            names += [t.variant for t in batch]
        return lists, np.array(targets, dtype=np.int64), names

    def _targets(
        self, walk: UserWalk, live: bool, variants: list[Variant], policy: chain.RankingPolicy, salt: str
    ) -> list[StreamTarget]:
        variant = assign_variant(walk.userid, variants, salt)
        base = self.users.get(walk.userid)
        triggers = dataclasses.replace(self.triggers, max_triggers=variant.max_triggers(self.triggers.max_triggers))
        out, static_candidates = [], None
        for step in walk.target_steps.tolist():
            user_dense = None
            if live and variant.live_events:
                state = apply_events(base, walk.items[:step], walk.labels[:step], walk.ratings[:step])
                if step:  # as the service: terms, history features and vector follow the events
                    terms = recent_terms(state.seen, state.seen_labels, self.catalog.genres_of_items)
                    state = dataclasses.replace(state, terms=terms)
                    user_dense = self._history_row(state) if variant.live_history else None
                state = self.tower.with_vector(state) if self.tower is not None else state
                candidates = self._recall(state, triggers)
            else:  # the same list before every step
                static_candidates = static_candidates or self._recall(base, triggers)
                candidates = static_candidates
            out.append(StreamTarget(walk.userid, variant.name, int(walk.items[step]), candidates,
                                    variant.policy(policy), user_dense))  # fmt: skip
        return out

    def _history_row(self, state: chain.UserState) -> np.ndarray | None:
        """The encoded history features after the events, as the service computes them."""
        if state.seen_ratings is None:
            return None
        item_dense = table_rows(self.item_ids, self.item_dense, state.seen)
        return encoded_history_row(self.spec, state.seen_labels, state.seen_ratings, item_dense)

    def _recall(self, state: chain.UserState, triggers: chain.TriggerPolicy) -> chain.Candidates:
        results, i2i_all = chain.recall_channels(self.index, state, self.quotas, triggers)
        return chain.merge_candidates(results, *i2i_all)

    def _rank(self, targets: list[StreamTarget]) -> list[np.ndarray]:
        if not targets:
            return []
        userids = np.array([t.userid for t in targets])
        like = score_candidates(self.session, self.spec, self.user_features, self.item_features, userids,
                                [t.candidates for t in targets], [t.user_dense for t in targets])  # fmt: skip
        out = []
        for t, probs in zip(targets, like, strict=True):
            out.append(chain.rank_and_cut(t.candidates, chain.final_scores(t.candidates, probs, t.policy), self.k)[0])
        return out
