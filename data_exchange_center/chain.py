"""The recommendation chain's pure steps, shared by the online service and the offline evaluation.

The online service fetches data from its backends (profiles, neighbours, kNN and term hits, features,
scores) and calls these functions; the offline evaluation calls the same functions with data from the
artifacts. So the list that is served is the list that was evaluated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data_exchange_center.artifacts import read_json
from data_exchange_center.item_index import Ranked, dense_ids, top_k

CHANNELS = ("i2i", "vector", "term", "popularity")
_CHANNEL_NAMES = np.array(CHANNELS, dtype=object)
# The recall evidence of each candidate that the ranker reads (``candidate_evidence``), in this order.
EVIDENCE_FIELDS = (
    "ev_i2i_relative",  # item-to-item score / the best candidate's (0 when unreachable)
    "ev_i2i_log",  # log(1 + item-to-item score)
    "ev_vector_relative",  # exp(vector score - the best vector hit's), 0 when not a vector hit
    "ev_vector_gap",  # (best vector hit's score - its score) / 10, capped at 1 (1 when not a hit)
    "ev_vector_hit",  # 1 when the vector channel returned it
    "ev_channel_prior",  # 1 / (1 + rank in the channel that proposed it)
    "ev_channel_rank_log",  # log(1 + rank in that channel) / 6
    *(f"ev_channel_{name}" for name in CHANNELS),  # one-hot: the channel that proposed it
)
VECTOR_GAP_CAP = 10.0
TRIGGER_WEIGHT_LIKED = 1.0  # a liked (rating > 3) offline item as an item-to-item trigger
TRIGGER_WEIGHT_OTHER = 0.3  # a watched but not liked item: still evidence of taste, weaker
DEFAULT_MAX_TRIGGERS = 20  # the user's most recent seen items used as triggers (selected on validation)


class ItemIndexLike(Protocol):
    """What the chain needs of an item index (in-process ``ItemIndex`` or the Elasticsearch adapter)."""

    def search_popular(self, k: int, exclude: np.ndarray | None = None) -> Ranked: ...

    def search_terms(self, terms: list[str], k: int, exclude: np.ndarray | None = None) -> Ranked: ...

    def search_vector(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None) -> Ranked: ...

    def neighbors_of(self, items: np.ndarray) -> Ranked: ...


@dataclass(frozen=True)
class UserState:
    """What the user profile store holds for one user (empty for an unknown user)."""

    terms: list[str]
    vector: np.ndarray | None  # (dim,) float32
    seen: np.ndarray  # (n_seen,) int64 offline items, time order
    seen_labels: np.ndarray  # (n_seen,) int8
    base_event_seq: int = 0  # the newest event-log rating in ``seen`` (the service applies later events)
    seen_ratings: np.ndarray | None = None  # (n_seen,) float32 aligned with ``seen``; None: not published
    # the SHA-256 of the user tower that computed ``vector`` from exactly ``seen`` and ``seen_labels``
    # (None: not known, or the history changed since): the tower's output for this state, without running it
    vector_tower: str | None = None

    @classmethod
    def unknown(cls) -> UserState:
        return cls([], None, np.zeros(0, np.int64), np.zeros(0, np.int8), seen_ratings=np.zeros(0, np.float32))


@dataclass(frozen=True)
class TriggerPolicy:
    """Which of the user's seen items trigger item-to-item recall, and how much each one weighs.

    The last ``max_triggers`` seen items trigger; a liked one weighs ``TRIGGER_WEIGHT_LIKED``, another
    ``unliked_weight``, times ``0.5 ** (age / half_life)`` where ``age`` is the number of seen items
    after it (no decay when ``half_life`` is 0). Selected on validation by recall/3
    (``recall/i2i_params.json``).
    """

    max_triggers: int = DEFAULT_MAX_TRIGGERS
    half_life: float = 0.0
    unliked_weight: float = TRIGGER_WEIGHT_OTHER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TriggerPolicy:
        return cls(
            max_triggers=int(raw.get("max_triggers", DEFAULT_MAX_TRIGGERS)),
            half_life=float(raw.get("half_life", 0.0)),
            unliked_weight=float(raw.get("unliked_weight", TRIGGER_WEIGHT_OTHER)),
        )

    def weights(self, labels: np.ndarray) -> np.ndarray:
        """Weights (n,) float32 of the last ``max_triggers`` of ``labels`` (the seen items, time order)."""
        labels = np.asarray(labels)[-self.max_triggers :] if self.max_triggers > 0 else np.asarray(labels)[:0]
        base = np.where(labels > 0, TRIGGER_WEIGHT_LIKED, self.unliked_weight)
        if self.half_life > 0:
            age = np.arange(len(labels) - 1, -1, -1, dtype=np.float64)  # 0 for the most recent
            base = base * np.power(0.5, age / self.half_life)
        return base.astype(np.float32)


def recall_channels(
    index: ItemIndexLike, user: UserState, quotas: dict[str, int], triggers: TriggerPolicy | int = DEFAULT_MAX_TRIGGERS
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Each channel's (items, scores), seen items excluded, at most ``quotas[channel]`` items; and the
    item-to-item scores of every reachable item (for the final score). An ``int`` for ``triggers`` is the
    trigger count with the default weights."""
    policy = triggers if isinstance(triggers, TriggerPolicy) else TriggerPolicy(max_triggers=int(triggers))
    seen = np.sort(user.seen)
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    i2i_all = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    if len(user.seen) and policy.max_triggers > 0:
        nbr, weights = index.neighbors_of(user.seen[-policy.max_triggers :])
        i2i_all = i2i_scores(nbr, weights, policy.weights(user.seen_labels))
        if quotas.get("i2i", 0):
            results["i2i"] = top_k(*i2i_all, quotas["i2i"], seen)
    if quotas.get("vector", 0) and user.vector is not None:
        results["vector"] = index.search_vector(user.vector, quotas["vector"], seen)
    if quotas.get("term", 0) and user.terms:
        results["term"] = index.search_terms(user.terms, quotas["term"], seen)
    if quotas.get("popularity", 0):
        results["popularity"] = index.search_popular(quotas["popularity"], seen)
    return results, i2i_all


def trigger_weights(labels: np.ndarray) -> np.ndarray:
    """Per seen item, its weight as an item-to-item trigger."""
    return np.where(np.asarray(labels) > 0, TRIGGER_WEIGHT_LIKED, TRIGGER_WEIGHT_OTHER).astype(np.float32)


def i2i_scores(neighbor_items: np.ndarray, neighbor_weights: np.ndarray, triggers: np.ndarray) -> Ranked:
    """Item-to-item scores of every reachable item: sum over triggers of trigger weight x neighbour weight.

    ``neighbor_items``/``neighbor_weights`` are (n_triggers, n_neighbors) with -1 padding;
    ``triggers`` is (n_triggers,). Returns (items, scores) sorted by item id.
    """
    flat = neighbor_items.ravel()
    contrib = (neighbor_weights * triggers[:, None]).ravel()
    valid = flat >= 0
    flat, contrib = flat[valid], contrib[valid]
    size = dense_ids(flat, limit=max(1 << 16, 32 * len(flat)))  # float64 sums by id: a table of bounded size
    if size is None:  # ids far larger than the number of entries: sort them
        items, inverse = np.unique(flat, return_inverse=True)
        return items, np.bincount(inverse, weights=contrib, minlength=len(items)).astype(np.float32)
    sums = np.bincount(flat, weights=contrib, minlength=size)  # by id: the same additions, in the same order
    reached = np.zeros(size, dtype=bool)
    reached[flat] = True
    items = np.flatnonzero(reached).astype(np.int64)
    return items, sums[items].astype(np.float32)


@dataclass
class Candidates:
    """Merged candidates of all channels, de-duplicated, with what the final score needs."""

    items: np.ndarray  # (n,) int64, in merge order (channel order, then channel rank)
    i2i_score: np.ndarray  # (n,) float32: item-to-item score (0 when unreachable)
    channel: np.ndarray  # (n,) object: the first channel that proposed the item
    rank_in_channel: np.ndarray  # (n,) int64: its rank in that channel
    counts: dict[str, int] = field(default_factory=dict)  # candidates contributed per channel
    vector_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (n,) NaN: not a vector hit


def merge_candidates(
    channel_results: dict[str, tuple[np.ndarray, np.ndarray]],
    i2i_items: np.ndarray,
    i2i_all_scores: np.ndarray,
) -> Candidates:
    """Concatenate channel results in ``CHANNELS`` order, keep each item's first occurrence, and attach
    every candidate's item-to-item score (looked up in the sorted ``i2i_items``/``i2i_all_scores``)."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    items_parts = [np.asarray(channel_results.get(name, empty)[0], dtype=np.int64) for name in CHANNELS]
    sizes = [len(part) for part in items_parts]
    all_items = np.concatenate(items_parts)
    _, first = np.unique(all_items, return_index=True)
    first = np.sort(first)
    items = all_items[first]
    code = np.repeat(np.arange(len(CHANNELS)), sizes)[first]  # the proposing channel's position in CHANNELS
    rank = (np.arange(len(all_items)) - np.repeat(np.cumsum(sizes) - sizes, sizes))[first]
    pos = np.searchsorted(i2i_items, items)
    pos = np.minimum(pos, max(len(i2i_items) - 1, 0))
    found = (i2i_items[pos] == items) if len(i2i_items) else np.zeros(len(items), dtype=bool)
    i2i = np.where(found, i2i_all_scores[pos] if len(i2i_items) else 0.0, 0.0).astype(np.float32)
    counts = dict(zip(CHANNELS, np.bincount(code, minlength=len(CHANNELS)).tolist(), strict=True))
    vector_items, vector_scores = channel_results.get("vector", empty)
    return Candidates(items, i2i, _CHANNEL_NAMES[code], rank, counts,
                      lookup_scores(np.asarray(vector_items, np.int64), np.asarray(vector_scores), items))  # fmt: skip


def candidate_evidence(candidates: Candidates) -> np.ndarray:
    """(n, len(EVIDENCE_FIELDS)) float32: each candidate's recall evidence, every value in [0, 1] except
    ``ev_i2i_log``. The ranker reads it after the user and item features (``FeatureSpec`` fields of source
    ``candidate``); training, evaluation and serving all compute it here."""
    n = len(candidates.items)
    i2i = np.clip(candidates.i2i_score.astype(np.float64), 0.0, None)
    best = float(i2i.max()) if n else 0.0
    vector = candidates.vector_score.astype(np.float64) if len(candidates.vector_score) == n else np.full(n, np.nan)
    hit = np.isfinite(vector)
    gap = np.full(n, VECTOR_GAP_CAP)
    if hit.any():
        gap[hit] = np.minimum(np.nanmax(vector) - vector[hit], VECTOR_GAP_CAP)
    channel = np.asarray(candidates.channel)
    columns = [
        i2i / best if best > 0 else np.zeros(n),
        np.log1p(i2i),
        np.where(hit, np.exp(-gap), 0.0),
        gap / VECTOR_GAP_CAP,
        hit,
        1.0 / (1.0 + candidates.rank_in_channel),
        np.log1p(candidates.rank_in_channel) / 6.0,
        *(channel == name for name in CHANNELS),
    ]
    return np.column_stack(columns).astype(np.float32) if n else np.zeros((0, len(EVIDENCE_FIELDS)), np.float32)


def lookup_scores(hit_items: np.ndarray, hit_scores: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(n,) float32: each of ``items``'s score among ``hit_items``, NaN where it is not a hit."""
    order = np.argsort(hit_items, kind="stable")
    sorted_items = hit_items[order]
    pos = np.minimum(np.searchsorted(sorted_items, items), max(len(sorted_items) - 1, 0))
    found = sorted_items[pos] == items if len(sorted_items) else np.zeros(len(items), dtype=bool)
    scores = np.asarray(hit_scores, np.float32)[order][pos] if len(sorted_items) else np.zeros(len(items))
    return np.where(found, scores, np.nan).astype(np.float32)


__all__ = [
    "Candidates",
    "EVIDENCE_FIELDS",
    "RankingPolicy",
    "TriggerPolicy",
    "UserState",
    "candidate_evidence",
    "final_score_parts",
    "final_scores",
    "lookup_scores",
    "i2i_scores",
    "merge_candidates",
    "rank_and_cut",
    "read_chain_parameters",
    "recall_channels",
    "top_k",
    "trigger_weights",
]


@dataclass(frozen=True)
class RankingPolicy:
    """How the final score combines "will watch" (item-to-item and vector evidence) and "will like" (the ranker).

    ``final = (watch + prior_weight * channel_prior) * p_like ** like_weight`` with
    ``watch = i2i / best i2i + vector_weight * exp(vector - best vector)``: the candidate's item-to-item
    score relative to the best candidate's (0 if unreachable), plus the vector model's next-item
    probability relative to the best vector hit's (its score is a softmax logit; 0 if not a vector hit).
    ``channel_prior = 1 / (1 + rank in the channel that proposed it)`` orders candidates that only
    another channel reached (cold users, few triggers).

    With ``ranker_final`` = 1 the ranker's output is the final score as it is: a ranker trained on the
    recall candidates with their evidence (``candidate_evidence``) already weighs watch and like.
    """

    like_weight: float = 1.0
    prior_weight: float = 0.01
    vector_weight: float = 0.0
    ranker_final: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, float]) -> RankingPolicy:
        values = {k: float(v) for k, v in raw.items() if k in cls.__dataclass_fields__}
        if "ranker_final" in values:
            values["ranker_final"] = int(values["ranker_final"])  # type: ignore[assignment]
        return cls(**values)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_chain_parameters(i2i_params_path: Path, ranking_policy_path: Path) -> tuple[TriggerPolicy, RankingPolicy]:
    """The chain parameters selected offline, from their two files (``ArtifactPaths.chain_params_paths``:
    ``recall/i2i_params.json`` written by recall/3, ``rank/ranking_policy.json`` written by evaluate/1).
    A missing file gives that part's defaults."""
    triggers = TriggerPolicy.from_dict(read_json(i2i_params_path)) if i2i_params_path.exists() else TriggerPolicy()
    policy = RankingPolicy()
    if ranking_policy_path.exists():
        policy = RankingPolicy.from_dict(read_json(ranking_policy_path))
    return triggers, policy


def final_score_parts(candidates: Candidates, like_probs: np.ndarray, policy: RankingPolicy) -> dict[str, np.ndarray]:
    """Per candidate, the terms of the final score: watch, channel_prior, like and final, (n,) each (with
    ``ranker_final``: ranker and final, the same values)."""
    n = len(candidates.items)
    if policy.ranker_final:
        score = np.asarray(like_probs, dtype=np.float32).reshape(-1)
        return {"ranker": score.astype(np.float64), "final": score}
    best = float(candidates.i2i_score.max()) if n else 0.0
    watch = np.clip(candidates.i2i_score, 0.0, None) / best if best > 0 else np.zeros(n)
    vector = candidates.vector_score.astype(np.float64) if len(candidates.vector_score) == n else np.full(n, np.nan)
    if policy.vector_weight > 0 and np.isfinite(vector).any():
        relative = np.exp(np.minimum(vector - np.nanmax(vector), 0.0))  # (n,) in (0, 1], NaN for non-hits
        watch = watch + policy.vector_weight * np.nan_to_num(relative, nan=0.0)
    prior = 1.0 / (1.0 + candidates.rank_in_channel)
    like = np.clip(np.asarray(like_probs, dtype=np.float64).reshape(-1), 1e-6, 1.0)
    final = ((watch + policy.prior_weight * prior) * like**policy.like_weight).astype(np.float32)
    return {"watch": np.asarray(watch, np.float64), "channel_prior": prior, "like": like, "final": final}


def final_scores(candidates: Candidates, like_probs: np.ndarray, policy: RankingPolicy) -> np.ndarray:
    """The final score of every candidate, (n,) float32; ``like_probs`` is the ranker's output (n,)."""
    return final_score_parts(candidates, like_probs, policy)["final"]


def rank_and_cut(candidates: Candidates, scores: np.ndarray, size: int) -> Ranked:
    """The ``size`` best candidates by final score (ties by item id)."""
    return top_k(candidates.items, scores, size)
