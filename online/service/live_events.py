"""Live feedback in the service: ingest (``POST /ml/events``) and the user's state at request time.

Ingest checks every event's item against the live item catalogue (an unknown item refuses the batch
with 422; an unknown user is fine, a new user starts here) and appends the batch to the event log,
which returns once it is durable: only then does the route answer 202.

At request time ``LiveState.apply`` reads the user's newest events (``Settings.events_read_limit``)
through the ``events`` guard (the request's time budget, a circuit breaker) and applies them to the
published base with ``data_exchange_center.events.events_state``, the function the offline streaming
evaluation uses. So the next request on any worker sees an event as soon as its 202 was sent, and no
worker keeps state of its own. When the event log is down, the request uses the published base and
names ``events`` in ``degraded``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data_exchange_center.chain import UserState
from data_exchange_center.events import Event, events_state
from data_exchange_center.experiments import ExperimentConfigError, Variant, assign_variant, parse_variants
from data_exchange_center.settings import Settings, SettingsError
from online.backends.base import BackendError, NotLoaded
from online.backends.event_log import AppendResult, EventLog, build_event_log
from online.service.errors import NotReady, ServiceError, Unavailable
from online.service.resilience import Deadline, Guard


class UnknownItem(ServiceError):
    status, code = 422, "unknown_item"


@dataclass(frozen=True)
class LiveResult:
    state: UserState | None
    n_events: int
    degraded: bool


def catalogue_of(features: Any, index: Any) -> np.ndarray:
    """The sorted item ids of the live version: the feature store's item table, else the item index's."""
    try:
        return np.asarray(features.current().items.ids, dtype=np.int64)
    except (AttributeError, NotLoaded):
        pass
    try:
        return np.asarray(index.current().index.item_ids, dtype=np.int64)
    except (AttributeError, NotLoaded):
        raise NotReady("the item catalogue is not loaded yet: events cannot be checked") from None


def check_items(events: list[Event], catalogue: np.ndarray) -> None:
    items = np.fromiter((e.itemid for e in events), dtype=np.int64, count=len(events))
    pos = np.minimum(np.searchsorted(catalogue, items), max(len(catalogue) - 1, 0))
    known = (catalogue[pos] == items) if len(catalogue) else np.zeros(len(items), bool)
    if not known.all():
        bad = np.flatnonzero(~known)
        listed = ", ".join(f"event {i}: itemid {items[i]}" for i in bad[:5].tolist())
        raise UnknownItem(f"{len(bad)} event(s) name an item that the live catalogue does not hold ({listed})")


class LiveState:
    """The event log as the service uses it (one per app, shared by the request threads)."""

    def __init__(self, log: EventLog, guard: Guard, read_limit: int) -> None:
        self.log = log
        self.guard = guard
        self.read_limit = read_limit

    def ingest(self, events: list[Event], catalogue: np.ndarray) -> AppendResult:
        check_items(events, catalogue)
        try:
            return self.log.append(events)
        except BackendError as exc:
            raise Unavailable(f"the events were not stored (send them again): {exc}") from None

    def apply(self, userid: int, base: UserState | None, deadline: Deadline, enabled: bool = True) -> LiveResult:
        """The user's state: ``base`` (None = unknown user) with the user's events since the base (those
        stored after ``base.base_event_seq``: a closed-loop run has the older ones in the base already)."""
        if not enabled or self.read_limit == 0:
            return LiveResult(base, 0, False)
        since = base.base_event_seq if base is not None else 0
        try:
            stored = self.guard.call(deadline, lambda t: self.log.read_user(userid, since, self.read_limit, t))
        except BackendError:
            return LiveResult(base, 0, True)
        if not stored:
            return LiveResult(base, 0, False)
        start = base if base is not None else UserState.unknown()
        return LiveResult(events_state(start, [s.event for s in stored]), len(stored), False)


class Experiments:
    """The configured variants and the salt; a user's variant is a pure function of the user id."""

    def __init__(self, variants: list[Variant], salt: str) -> None:
        self.variants = variants
        self.salt = salt

    @classmethod
    def none(cls) -> Experiments:
        return cls(parse_variants(""), "")

    def variant_of(self, userid: int) -> Variant:
        if len(self.variants) == 1:
            return self.variants[0]
        return assign_variant(userid, self.variants, self.salt)


def build_live_feedback(settings: Settings, guard: Guard) -> tuple[LiveState, Experiments]:
    """The app's event log (``Settings.event_store``) and experiments (``Settings.experiment_variants``)."""
    try:
        variants = parse_variants(settings.experiment_variants)
    except ExperimentConfigError as exc:
        raise SettingsError(f"experiment_variants: {exc}") from None
    live = LiveState(build_event_log(settings), guard, settings.events_read_limit)
    return live, Experiments(variants, settings.experiment_salt)
