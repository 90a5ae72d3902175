"""One small interface per backend role, and the errors an adapter may raise.

A request reads one immutable snapshot per role (``current()``), so everything it uses comes from one
published version, and a version switch (a new snapshot swapped in by ``online.backends.versions``)
never changes data under a running request.

- ``ProfileStore``: a user's recall state (terms, vector, seen items) or ``None`` for an unknown user.
- ``ItemIndexProvider``: the item index (``data_exchange_center.chain.ItemIndexLike``) and chain
  parameters of the live item version.
- ``FeatureStore``: encoded ranking features: one user row per request, item rows from a per-version cache.
- ``Scorer``: the ranker's like probability of encoded rows, and the vector model's user side
  (``online.backends.user_tower``) at request time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from data_exchange_center.chain import ItemIndexLike, RankingPolicy, TriggerPolicy, UserState
from data_exchange_center.feature_spec import FeatureSpec
from online.backends.versions import NotLoaded, Refreshing

if TYPE_CHECKING:
    from online.backends.user_tower import UserTower

__all__ = ["NotLoaded", "Refreshing"]  # with the interfaces below

Encoded = tuple[np.ndarray, np.ndarray]  # sparse int64 (n, k), dense float32 (n, m)


class BackendError(Exception):
    """A backend call failed or exceeded its time budget; the chain falls back and marks it degraded."""

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"{backend}: {message}")


@dataclass(frozen=True)
class ReadyStatus:
    """What ``GET /ready`` reports for one role."""

    ready: bool
    backend: str
    version: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"ready": self.ready, "backend": self.backend, "version": self.version}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class ChainParams:
    """Chain parameters selected offline (published in the item version) and the quotas from settings."""

    quotas: dict[str, int]
    triggers: TriggerPolicy = field(default_factory=TriggerPolicy)
    policy: RankingPolicy = field(default_factory=RankingPolicy)


@dataclass(frozen=True)
class IndexSnapshot:
    index: ItemIndexLike
    params: ChainParams
    version: str


class Lifecycle(Protocol):
    name: str  # the role's backend name in /ready, metrics and logs
    # An adapter that calls a server also has ``server: str`` (its URL): the roles on one server fail
    # together within a request (``online.service.resilience.Deadline.failed_servers``).

    def maybe_refresh(self) -> None:
        """A cheap version check at most every few seconds; a new version loads in the background.

        The service calls it from its own background thread, never on a request's clock."""

    def snapshots(self) -> list[Refreshing[Any]]:
        """The versioned snapshots this backend holds in process (empty when the server holds them)."""
        ...

    def status(self) -> ReadyStatus:
        """Can this backend answer now? (A bounded check: it may talk to the server.)"""
        ...

    def close(self) -> None: ...


class ProfileStore(Lifecycle, Protocol):
    def fetch(self, userid: int, timeout_s: float) -> tuple[UserState | None, str]:
        """The user's state (None when the live version does not know the user) and that version."""
        ...


class ItemIndexProvider(Lifecycle, Protocol):
    def current(self) -> IndexSnapshot:
        """The live version's index (``NotLoaded`` before the first load)."""
        ...

    def bind(self, snapshot: IndexSnapshot, timeout_s: float) -> ItemIndexLike:
        """``snapshot``'s index with every call bounded by ``timeout_s`` (a remote index's budget)."""
        ...


class FeatureSnapshot(Protocol):
    version: str
    spec: FeatureSpec  # the version's feature spec (its recall-evidence fields end the ranker's dense inputs)

    def item_rows(self, items: np.ndarray) -> Encoded:
        """Encoded features of ``items`` (n,) from the per-version cache; unknown items get defaults."""
        ...

    def unknown_user_row(self) -> Encoded:
        """The encoded row of a user without features (1 row)."""
        ...


class FeatureStore(Lifecycle, Protocol):
    def current(self) -> FeatureSnapshot: ...

    def user_row(self, snapshot: FeatureSnapshot, userid: int, timeout_s: float) -> Encoded:
        """The user's encoded features (1 row); defaults for an unknown user."""
        ...

    def cached_user_row(self, snapshot: FeatureSnapshot, userid: int) -> Encoded | None:
        """The user's row without I/O when ``user_row`` failed (the last one fetched), else None."""
        ...


class Scorer(Lifecycle, Protocol):
    def score(self, sparse: np.ndarray, dense: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        """Like probabilities (n,) float32 of encoded rows, and the model version that produced them."""
        ...

    def user_vector(
        self, tower: UserTower, items: np.ndarray, liked: np.ndarray, timeout_s: float
    ) -> tuple[np.ndarray, str]:
        """``[u, 1]`` (batch, dim) float32 of encoded recent items by ``tower``, and what computed it."""
        ...
