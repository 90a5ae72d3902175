"""The service object behind the routes: backends, guards, metrics and the recommender of one app."""

from __future__ import annotations

import logging
import time
from typing import Any

from data_exchange_center.settings import Settings
from online.backends.base import BackendError, NotLoaded, ReadyStatus
from online.backends.registry import build_backends
from online.service.errors import NotReady, Unavailable
from online.service.metrics import Metrics
from online.service.recommender import Backends, Recommendation, Recommender
from online.service.resilience import CircuitBreaker, Deadline, Guard
from online.service.versions import Refreshing

log = logging.getLogger("recsys.online.service")
GUARDED = ("profile", "item_index", "features", "scorer")


class RecService:
    def __init__(self, settings: Settings, backend_overrides: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.backends: Backends = build_backends(settings, backend_overrides)
        self.guards = {name: self._guard(name) for name in GUARDED}
        self.recommender = Recommender(self.backends, self.guards, self.metrics)
        for refreshing in self._refreshings():
            refreshing.on_switch = self._on_switch

    def _guard(self, name: str) -> Guard:
        s = self.settings
        breaker = CircuitBreaker(name, s.breaker_failures, s.breaker_reset_s)
        return Guard(breaker, s.backend_timeout_ms / 1000, lambda b: self.metrics.backend_errors.labels(b).inc())

    def _refreshings(self) -> list[Refreshing[Any]]:
        found = []
        for backend in self.backends.all():
            found += [v for v in vars(backend).values() if isinstance(v, Refreshing)]
        return found

    def _on_switch(self, component: str, previous: str | None, version: str) -> None:
        if previous is not None:
            self.metrics.version_switches.labels(component).inc()
        log.info("version switch", extra={"component": component, "previous": previous, "version": version})

    # -- requests ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """The cheap, rate-limited version checks of every backend (a load runs in the background)."""
        for backend in self.backends.all():
            backend.maybe_refresh()

    def recommend(self, userid: int, size: int) -> Recommendation:
        self.refresh()
        deadline = Deadline(self.settings.request_timeout_ms / 1000)
        try:
            return self.recommender.recommend(userid, size, deadline)
        except NotLoaded as exc:
            raise NotReady(f"the service is not ready: {exc}") from None
        except BackendError as exc:
            raise Unavailable(f"no fallback answered: {exc}") from None

    def wait_until_loaded(self, timeout_s: float = 120.0) -> None:
        """Block until every snapshot is loaded (tests, tools); ``NotReady`` with the reasons on time-out."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.refresh()
            pending = [r for r in self._refreshings() if not r.loaded]
            if not pending:
                return
            if time.monotonic() > deadline:
                reasons = "; ".join(f"{r.name}: {r.last_error or 'loading'}" for r in pending)
                raise NotReady(f"not loaded after {timeout_s:.0f} s: {reasons}")
            time.sleep(0.05)

    # -- health ---------------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Per role: ready, backend, version; the service is ready when every role can answer."""
        self.refresh()
        b = self.backends
        roles: dict[str, ReadyStatus] = {
            "profile": b.profiles.status(),
            "item_index": b.index.status(),
            "features": b.features.status(),
            "scorer": b.scorer.status(),
        }
        if b.index_fallback is not None:
            roles["item_index_fallback"] = b.index_fallback.status()
        if b.scorer_fallback is not None:
            roles["scorer_fallback"] = b.scorer_fallback.status()
        report: dict[str, Any] = {name: status.to_dict() for name, status in roles.items()}
        for name, guard in self.guards.items():
            report[name]["breaker"] = guard.breaker.state
        ready = all(status.ready for status in roles.values())
        return ready, report

    def close(self) -> None:
        for backend in self.backends.all():
            backend.close()
