"""Why an item was recommended, computed from the same data and formulas as its score.

For each recommended item, ``explain_items`` returns the channel that proposed it
(``chain.merge_candidates``'s first channel) and the evidence behind the score:

- ``triggers``: the user's items whose item-to-item neighbours reached it, with each one's share of
  the item-to-item score (``chain.i2i_scores`` split by trigger: the shares add up to that score);
- ``matched_genres``: the user's recall terms that the item carries (the term channel's match);
- ``similarity``: the vector channel's inner product of the user and item vectors;
- ``popularity_rank``: its place in the popularity channel;
- ``score_parts``: the terms of ``chain.final_scores`` (``(watch + prior_weight * channel_prior) *
  like ** like_weight``), whose product is the served score; or, for a ranker trained on the candidates
  with their evidence (``ranker_final``), its output, which is the served score.

These are pure functions over numpy arrays, like ``chain``; the online service calls them with the
request's own profile, candidates, channel results and scores, and the offline evaluation may too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_exchange_center import chain
from data_exchange_center.item_catalog import ItemCatalog

MAX_TRIGGERS_SHOWN = 3


def i2i_triggers(user: chain.UserState, triggers: chain.TriggerPolicy | int) -> tuple[np.ndarray, np.ndarray]:
    """The triggers ``chain.recall_channels`` uses and their weights (an ``int`` is a trigger count)."""
    policy = triggers if isinstance(triggers, chain.TriggerPolicy) else chain.TriggerPolicy(max_triggers=int(triggers))
    if policy.max_triggers <= 0 or not len(user.seen):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return user.seen[-policy.max_triggers :], policy.weights(user.seen_labels)


def trigger_contributions(
    neighbor_items: np.ndarray, neighbor_weights: np.ndarray, trigger_weights: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """(n_items, n_triggers) float32: each trigger's part of each item's item-to-item score.

    ``neighbor_items``/``neighbor_weights`` are the triggers' (n_triggers, n_neighbors) rows (-1 padded),
    as ``chain.i2i_scores`` takes them; a row of the result sums to that item's ``i2i_scores`` value.
    """
    if not len(trigger_weights) or not len(items):
        return np.zeros((len(items), len(trigger_weights)), np.float32)
    match = neighbor_items[None, :, :] == np.asarray(items, np.int64)[:, None, None]  # (items, triggers, nbrs)
    per_trigger = np.where(match, neighbor_weights[None, :, :] * trigger_weights[None, :, None], 0.0).sum(axis=2)
    return per_trigger.astype(np.float32)  # (n_items, n_triggers)


def score_parts(
    candidates: chain.Candidates, like_probs: np.ndarray, policy: chain.RankingPolicy
) -> dict[str, np.ndarray]:
    """Per candidate, the terms of ``chain.final_scores``, (n,) each: the item-to-item score, ``watch`` (that
    score over the best candidate's, plus the weighted vector evidence), channel_prior, like and final."""
    parts = chain.final_score_parts(candidates, like_probs, policy)
    return {"i2i_score": np.asarray(candidates.i2i_score, np.float64), **parts}


def _channel_scores(results: dict[str, tuple[np.ndarray, np.ndarray]], channel: str) -> dict[int, float]:
    items, scores = results.get(channel, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
    return dict(zip(np.asarray(items).tolist(), np.asarray(scores, np.float64).tolist(), strict=True))


def _top_triggers(contributions: np.ndarray) -> np.ndarray:
    """(n_items, <= MAX_TRIGGERS_SHOWN) columns of the largest shares per row, largest first."""
    if not contributions.size:
        return np.zeros((len(contributions), 0), np.int64)
    return np.argsort(-contributions, axis=1, kind="stable")[:, :MAX_TRIGGERS_SHOWN]


def explain_items(
    items: np.ndarray,
    user: chain.UserState,
    candidates: chain.Candidates,
    channel_results: dict[str, tuple[np.ndarray, np.ndarray]],
    parts: dict[str, np.ndarray],
    contributions: np.ndarray,
    triggers: tuple[np.ndarray, np.ndarray],
    catalog: ItemCatalog,
    policy: chain.RankingPolicy,
) -> list[dict[str, Any]]:
    """One reason per item of ``items`` (the served list, a subset of ``candidates.items``).

    ``contributions`` is ``trigger_contributions(...)`` for ``items`` (n_items, n_triggers) and
    ``triggers`` the (items, weights) pair it was computed for.
    """
    items = np.asarray(items, np.int64)
    rows = np.argsort(candidates.items, kind="stable")
    rows = rows[np.searchsorted(candidates.items, items, sorter=rows)]  # each served item's candidate row
    user_terms = set(user.terms)
    trigger_items, _ = triggers
    trigger_liked = (user.seen_labels[len(user.seen_labels) - len(trigger_items) :] > 0).tolist()
    trigger_titles = [d["title"] for d in catalog.describe(trigger_items, ("title",))]
    item_genres = catalog.describe(items, ("genres",))
    similarity_of = _channel_scores(channel_results, "vector")
    top = _top_triggers(contributions)
    reasons = []
    for i, (item, row) in enumerate(zip(items.tolist(), rows.tolist(), strict=True)):
        channel = str(candidates.channel[row])
        evidence: dict[str, Any] = {}
        shown = [t for t in top[i].tolist() if contributions[i, t] > 0]
        if shown:
            evidence["triggers"] = [
                {
                    "itemid": int(trigger_items[t]),
                    "title": trigger_titles[t],
                    "liked": bool(trigger_liked[t]),
                    "contribution": round(float(contributions[i, t]), 6),
                }
                for t in shown
            ]
        matched = sorted(user_terms.intersection(item_genres[i]["genres"]))
        if matched:
            evidence["matched_genres"] = matched
        if item in similarity_of:
            evidence["similarity"] = round(similarity_of[item], 6)
        if channel == "popularity":
            evidence["popularity_rank"] = int(candidates.rank_in_channel[row]) + 1
        reasons.append(
            {
                "channel": channel,
                "rank_in_channel": int(candidates.rank_in_channel[row]) + 1,
                "evidence": evidence,
                "score_parts": _parts_of(parts, row, policy),
                "summary": summarize(channel, evidence),
            }
        )
    return reasons


def _parts_of(parts: dict[str, np.ndarray], row: int, policy: chain.RankingPolicy) -> dict[str, float]:
    if policy.ranker_final:  # the ranker weighed the evidence itself: its output is the score
        return {
            "i2i_score": round(float(parts["i2i_score"][row]), 6),
            "ranker": round(float(parts["ranker"][row]), 6),
            "final": round(float(parts["final"][row]), 6),
        }
    return {
        "i2i_score": round(float(parts["i2i_score"][row]), 6),
        "watch": round(float(parts["watch"][row]), 6),
        "channel_prior": round(float(parts["channel_prior"][row]), 6),
        "prior_weight": policy.prior_weight,
        "like": round(float(parts["like"][row]), 6),
        "like_weight": policy.like_weight,
        "final": round(float(parts["final"][row]), 6),
    }


def summarize(channel: str, evidence: dict[str, Any]) -> str:
    """One sentence a reader can follow: the proposing channel's evidence first."""
    titles = [t["title"] or f"item {t['itemid']}" for t in evidence.get("triggers", [])]
    because = "because you rated " + _join(titles) if titles else ""
    by_channel = {
        "i2i": because,
        "term": "matches your genres " + _join(evidence.get("matched_genres", [])),
        "vector": f"close to your taste (similarity {evidence.get('similarity', 0.0):.2f})",
        "popularity": f"popular (#{evidence.get('popularity_rank', '?')})",
    }
    first = by_channel.get(channel) or channel
    extra = because if because and channel != "i2i" else ""
    text = f"{first}; also {extra}" if extra else first
    return text[:1].upper() + text[1:]


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
