"""One recommendation request as a chain of named steps over the backends' snapshots.

    fetch_user_profile -> recall_candidates (user_vector, then the channels) -> fetch_features -> score
    -> rank_and_filter

Each step reads one backend through its ``Guard`` (time budget and circuit breaker). When a backend
fails, the step uses its fallback and names the component in ``degraded``:

- profile (user store down): the unknown-user state, i.e. popularity;
- item_index (Elasticsearch down or never reached): the in-process index over the published items;
- features (feature store down): the user's last fetched row, else the in-process fallback's row,
  else the defaults of an unknown user;
- scorer (Triton down): ONNX Runtime in-process, else the recall order (``like`` = 1); the same for
  the vector model's user side, computed at request time from the user's recent items (published
  profile and live events) by the scorer role, else the user vector published with the profile.

A primary backend that has loaded nothing yet (unreachable since start-up) counts as failed, so its
fallback answers from the first request.

The pure steps (recall per channel, merge, final score, cut) are ``data_exchange_center.chain``'s,
the same functions the offline evaluation runs, so the served list is the evaluated list.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_exchange_center import chain, explain
from data_exchange_center.events import recent_terms
from data_exchange_center.experiments import DEFAULT_VARIANT, Variant
from data_exchange_center.feature_spec import combine_features
from data_exchange_center.item_catalog import ItemCatalog
from data_exchange_center.user_history import encoded_history_row
from online.backends.base import (
    BackendError,
    Encoded,
    FeatureSnapshot,
    FeatureStore,
    IndexSnapshot,
    ItemIndexProvider,
    Lifecycle,
    NotLoaded,
    ProfileStore,
    Scorer,
)
from online.backends.user_tower import UserTowers
from online.service.live_events import Experiments, LiveState
from online.service.metrics import Metrics
from online.service.resilience import Deadline, Guard

# user_vector (the request-time user side of the vector model) is timed inside recall_candidates
STEPS = ("fetch_user_profile", "user_vector", "recall_candidates", "fetch_features", "score", "rank_and_filter")


@dataclass
class Backends:
    """The adapters of one app, with the in-process fallbacks of the remote ones (None when local)."""

    profiles: ProfileStore
    index: ItemIndexProvider
    features: FeatureStore
    scorer: Scorer
    index_fallback: ItemIndexProvider | None = None
    features_fallback: FeatureStore | None = None
    scorer_fallback: Scorer | None = None
    towers: UserTowers | None = None  # the vector model's user side of each item version (the scorer runs it)

    def all(self) -> list[Lifecycle]:
        roles = [self.profiles, self.index, self.features, self.scorer,
                 self.index_fallback, self.features_fallback, self.scorer_fallback, self.towers]  # fmt: skip
        return [r for r in roles if r is not None]

    def fallbacks(self) -> dict[str, Lifecycle]:
        """The in-process fallbacks by role name in ``/ready`` (``item_index``, ``features``, ``scorer``)."""
        found = {"item_index": self.index_fallback, "features": self.features_fallback, "scorer": self.scorer_fallback}
        return {role: backend for role, backend in found.items() if backend is not None}


@dataclass
class Recommendation:
    userid: int
    items: np.ndarray  # (size,) int64
    scores: np.ndarray  # (size,) float32
    versions: dict[str, str | None]
    degraded: list[str]
    known_user: bool
    step_seconds: dict[str, float] = field(default_factory=dict)
    variant: str = DEFAULT_VARIANT  # the user's experiment variant
    reasons: list[dict[str, Any]] | None = None  # per item, with ``explain``

    def to_json(self) -> dict[str, Any]:
        scores = np.round(self.scores.astype(np.float64), 6).tolist()
        item_list = [{"itemid": i, "score": s} for i, s in zip(self.items.tolist(), scores, strict=True)]
        for entry, reason in zip(item_list, self.reasons or [], strict=False):
            entry["reason"] = reason
        return {
            "userid": self.userid,
            "item_list": item_list,
            "versions": self.versions,
            "degraded": self.degraded,
            "variant": self.variant,
            "timings_ms": {step: round(seconds * 1000, 3) for step, seconds in self.step_seconds.items()},
        }


@dataclass
class _Request:
    userid: int
    size: int
    deadline: Deadline
    versions: dict[str, str | None] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)
    variant: Variant = field(default_factory=lambda: Variant(DEFAULT_VARIANT, 1.0))
    recall: dict[str, Any] = field(default_factory=dict)  # what ``explain`` re-reads: results, index
    live_timeline: chain.UserState | None = None  # the user's state after live events (with ratings), if any

    def mark_degraded(self, role: str) -> None:
        if role not in self.degraded:
            self.degraded.append(role)

    def timed(self, step: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            self.step_seconds[step] = time.perf_counter() - started


class Recommender:
    def __init__(
        self,
        backends: Backends,
        guards: dict[str, Guard],
        metrics: Metrics,
        live: LiveState | None = None,
        experiments: Experiments | None = None,
        catalog: Callable[[], ItemCatalog] | None = None,
    ) -> None:
        self.backends = backends
        self.guards = guards
        self.metrics = metrics
        self.live = live  # the event log: the user's events on top of the published profile
        self.experiments = experiments or Experiments.none()
        self.catalog = catalog  # the live item catalog (genres: the terms of a user with events)

    def recommend(
        self, userid: int, size: int, deadline: Deadline, explain_with: ItemCatalog | None = None
    ) -> Recommendation:
        """The ranked list; with ``explain_with`` (the item catalog, for titles) each item's reason too."""
        req = _Request(userid, size, deadline, variant=self.experiments.variant_of(userid))
        user = req.timed("fetch_user_profile", lambda: self.fetch_user_profile(req))
        candidates, params = req.timed("recall_candidates", lambda: self.recall_candidates(req, user))
        features = req.timed("fetch_features", lambda: self.fetch_features(req, candidates))
        like = req.timed("score", lambda: self.score(req, features))
        policy = self.policy_of(req, params)
        items, scores = req.timed("rank_and_filter", lambda: self.rank_and_filter(req, candidates, like, policy))
        reasons = None
        if explain_with is not None:
            state = user if user is not None else chain.UserState.unknown()
            reasons = req.timed(
                "explain", lambda: self.explain_items(req, state, candidates, like, policy, items, explain_with)
            )
        self._observe(req, candidates)
        known = user is not None
        return Recommendation(
            userid, items, scores, req.versions, req.degraded, known, req.step_seconds, req.variant.name, reasons
        )

    def user_state(self, userid: int, deadline: Deadline) -> tuple[chain.UserState | None, _Request]:
        """The user's state as a recommendation starts from it (published profile and live events), with
        the request record that holds its versions and degraded roles (``GET /ml/users/<id>/history``)."""
        req = _Request(userid, 0, deadline, variant=self.experiments.variant_of(userid))
        return self.fetch_user_profile(req), req

    # -- the steps ------------------------------------------------------------------------------------
    def fetch_user_profile(self, req: _Request) -> chain.UserState | None:
        """The user's recall state: the published profile with the user's live events applied; None for
        an unknown user without events (or when the store is down and there are none)."""
        store = self.backends.profiles
        try:
            state, version = self.guards["profile"].call(req.deadline, lambda t: store.fetch(req.userid, t))
        except BackendError:
            req.degraded.append("profile")
            state, version = None, None
        req.versions["users"] = version
        return self.apply_live_events(req, state)

    def apply_live_events(self, req: _Request, state: chain.UserState | None) -> chain.UserState | None:
        if self.live is None:
            return state
        result = self.live.apply(req.userid, state, req.deadline, req.variant.live_events)
        if result.degraded:
            req.degraded.append("events")
        live_history = req.variant.live_history and result.state is not None and result.state.seen_ratings is not None
        if result.n_events and live_history:
            req.live_timeline = result.state  # the ranker's history features follow the events
        if result.n_events and result.state is not None and self.catalog is not None:
            catalog = self.catalog()
            if not len(catalog):
                return result.state  # the published terms until the catalog is loaded
            terms = recent_terms(result.state.seen, result.state.seen_labels, catalog.genres_of_items)
            return dataclasses.replace(result.state, terms=terms)
        return result.state

    def recall_candidates(
        self, req: _Request, user: chain.UserState | None
    ) -> tuple[chain.Candidates, chain.RankingPolicy]:
        """Every channel's candidates (seen items excluded), merged and de-duplicated."""
        base = user if user is not None else chain.UserState.unknown()
        vectors: dict[str, chain.UserState] = {}  # the user with the vector of each item version used

        def with_vector(item_version: str) -> chain.UserState:
            if item_version not in vectors:
                vectors[item_version] = req.timed("user_vector", lambda: self.user_vector(req, base, item_version))
            return vectors[item_version]

        primary, fallback = self.backends.index, self.backends.index_fallback
        try:
            snapshot = primary.current()
            state = with_vector(snapshot.version)
            results, i2i_all = self.guards["item_index"].call(
                req.deadline, lambda t: self._recall(snapshot, primary.bind(snapshot, t), state, req)
            )
            req.recall["provider"] = primary
        except (BackendError, NotLoaded):
            if fallback is None:
                raise
            req.degraded.append("item_index")
            snapshot = fallback.current()
            state = with_vector(snapshot.version)
            results, i2i_all = self._recall(snapshot, snapshot.index, state, req)
            req.recall["provider"] = fallback
        req.versions["items"] = snapshot.version
        req.recall.update(results=results, snapshot=snapshot)
        return chain.merge_candidates(results, *i2i_all), snapshot.params.policy

    def user_vector(self, req: _Request, user: chain.UserState, item_version: str) -> chain.UserState:
        """``user`` with the vector model's user side of its recent items, computed now by the scorer role
        with the tower of ``item_version``; unchanged (the published vector) when that version has no
        tower or no scorer answers, for a user without seen items, and when the published vector is that
        tower's output for this very history (no live events since: no model call needed)."""
        towers = self.backends.towers
        tower = towers.tower_for(item_version) if towers is not None else None
        if tower is None or len(user.seen) == 0 or tower.made(user):
            return user
        items, liked = tower.encode(user)
        try:
            vectors, _ = self.guards["scorer"].call(
                req.deadline, lambda t: self.backends.scorer.user_vector(tower, items, liked, t)
            )
        except BackendError:
            req.mark_degraded("scorer")
            fallback = self.backends.scorer_fallback
            if fallback is None:
                return user
            try:
                vectors, _ = fallback.user_vector(tower, items, liked, 0.0)
            except Exception:
                self.metrics.backend_errors.labels(fallback.name).inc()
                return user
        return dataclasses.replace(user, vector=np.asarray(vectors, np.float32).reshape(-1))

    @staticmethod
    def _recall(snapshot: IndexSnapshot, index: chain.ItemIndexLike, user: chain.UserState, req: _Request) -> Any:
        quotas = dict(snapshot.params.quotas)
        quotas["popularity"] = max(quotas.get("popularity", 0), req.size)  # a cold user still gets `size` items
        return chain.recall_channels(index, user, quotas, Recommender._trigger_policy(snapshot, req))

    @staticmethod
    def _trigger_policy(snapshot: IndexSnapshot, req: _Request) -> chain.TriggerPolicy:
        """The item version's trigger policy with the user's variant's trigger count."""
        triggers = snapshot.params.triggers
        return dataclasses.replace(triggers, max_triggers=req.variant.max_triggers(triggers.max_triggers))

    def fetch_features(self, req: _Request, candidates: chain.Candidates) -> Encoded:
        """Model inputs: the user's row broadcast over the candidates' cached item rows, then each
        candidate's recall evidence when the ranker reads it."""
        store, fallback = self.backends.features, self.backends.features_fallback
        snapshot: FeatureSnapshot | None = None
        try:
            live = snapshot = store.current()
            user_part = self.guards["features"].call(req.deadline, lambda t: store.user_row(live, req.userid, t))
        except (BackendError, NotLoaded):
            if snapshot is None and fallback is None:
                raise
            req.degraded.append("features")
            user_part, snapshot = self._fallback_user_row(snapshot, req.userid)
        req.versions["features"] = snapshot.version
        if req.live_timeline is not None:
            user_part = self._live_history_row(snapshot, user_part, req.live_timeline)
        evidence = chain.candidate_evidence(candidates) if snapshot.spec.n_evidence else None
        return combine_features(user_part, snapshot.item_rows(candidates.items), evidence)

    @staticmethod
    def _live_history_row(snapshot: FeatureSnapshot, user_part: Encoded, timeline: chain.UserState) -> Encoded:
        """The user's row with the history features of the timeline after the live events (the offline
        formulas, ``user_history``): the feature store's row holds them as of the published version."""
        assert timeline.seen_ratings is not None
        dense = encoded_history_row(
            snapshot.spec, timeline.seen_labels, timeline.seen_ratings, snapshot.item_rows(timeline.seen)[1]
        )
        return user_part if dense is None else (user_part[0], dense)

    def _fallback_user_row(self, snapshot: FeatureSnapshot | None, userid: int) -> tuple[Encoded, FeatureSnapshot]:
        """The primary's cached row, else the fallback store's row (its items too when the primary has none)."""
        store, fallback = self.backends.features, self.backends.features_fallback
        row = store.cached_user_row(snapshot, userid) if snapshot is not None else None
        if row is not None and snapshot is not None:
            return row, snapshot
        if fallback is None:
            assert snapshot is not None  # else no fallback: the caller re-raised
            return snapshot.unknown_user_row(), snapshot
        fallback_snapshot = fallback.current()
        row = fallback.user_row(fallback_snapshot, userid, 0.0)
        return row, snapshot if snapshot is not None else fallback_snapshot

    def score(self, req: _Request, features: Encoded) -> np.ndarray:
        """The ranker's output per candidate (a like probability, or the served score of a ranker that
        reads the recall evidence); the recall order (all 1) when no model answers."""
        sparse, dense = features
        version: str | None
        try:
            like, version = self.guards["scorer"].call(
                req.deadline, lambda t: self.backends.scorer.score(sparse, dense, t)
            )
        except BackendError:
            req.mark_degraded("scorer")
            like, version = self._fallback_score(sparse, dense)
        req.versions["model"] = version
        return like

    def _fallback_score(self, sparse: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, str | None]:
        fallback = self.backends.scorer_fallback
        if fallback is not None:
            try:
                return fallback.score(sparse, dense, 0.0)
            except Exception:
                self.metrics.backend_errors.labels(fallback.name).inc()
        return np.ones(len(sparse), np.float32), None

    @staticmethod
    def policy_of(req: _Request, params: chain.RankingPolicy) -> chain.RankingPolicy:
        """The policy this request ranks with: its variant's; when no model scored and the published
        policy takes the ranker's output as the final score, the recall evidence alone (like = 1)."""
        policy = req.variant.policy(params)
        if policy.ranker_final and req.versions.get("model") is None:
            return dataclasses.replace(policy, ranker_final=0, like_weight=0.0)
        return policy

    def rank_and_filter(
        self, req: _Request, candidates: chain.Candidates, like: np.ndarray, policy: chain.RankingPolicy
    ) -> tuple[np.ndarray, np.ndarray]:
        """Final scores (``chain.final_scores`` with the request's policy), the ``size`` best."""
        scores = chain.final_scores(candidates, like, policy)
        return chain.rank_and_cut(candidates, scores, req.size)

    def explain_items(
        self,
        req: _Request,
        user: chain.UserState,
        candidates: chain.Candidates,
        like: np.ndarray,
        policy: chain.RankingPolicy,
        items: np.ndarray,
        catalog: ItemCatalog,
    ) -> list[dict[str, Any]]:
        """Each served item's reason, from this request's own profile, candidates, channel results and
        scores; the triggers' neighbours are read again from the same index snapshot."""
        snapshot: IndexSnapshot = req.recall["snapshot"]
        triggers = explain.i2i_triggers(user, self._trigger_policy(snapshot, req))
        provider = req.recall["provider"]
        try:
            nbr, nbr_w = self.guards["item_index"].call(
                req.deadline, lambda t: provider.bind(snapshot, t).neighbors_of(triggers[0])
            )
            contributions = explain.trigger_contributions(nbr, nbr_w, triggers[1], items)
        except BackendError:
            req.degraded.append("explain")
            contributions = np.zeros((len(items), len(triggers[0])), np.float32)
        parts = explain.score_parts(candidates, like, policy)
        results = req.recall["results"]
        return explain.explain_items(items, user, candidates, results, parts, contributions, triggers, catalog, policy)

    def _observe(self, req: _Request, candidates: chain.Candidates) -> None:
        child = self.metrics.child
        for step, seconds in req.step_seconds.items():
            child("step_latency", step).observe(seconds)
        for channel, count in candidates.counts.items():
            child("candidates", channel).observe(count)
        for component in req.degraded:
            child("degraded", component).inc()
        child("variant_requests", req.variant.name).inc()
