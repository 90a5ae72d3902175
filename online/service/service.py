"""The service object behind the routes: backends, guards, metrics and the recommender of one app.

Version checks run on background threads (one per backend, started in each worker process), never on
a request's clock: a request only reads the snapshots that are already loaded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from data_exchange_center.events import Event
from data_exchange_center.settings import Settings
from online.backends.base import BackendError, Lifecycle, NotLoaded
from online.backends.event_log import AppendResult
from online.backends.item_catalog import ItemCatalogProvider
from online.backends.versions import Refreshing
from online.service.errors import NotReady, Unavailable
from online.service.live_events import build_live_feedback, catalogue_of
from online.service.metrics import Metrics
from online.service.recommender import Backends, Recommendation, Recommender
from online.service.registry import build_backends
from online.service.resilience import CircuitBreaker, Deadline, Guard

log = logging.getLogger("recsys.online.service")
SERVICE_KEY = "recsys"  # the Flask app extension that holds the app's RecService (``s1_server.create_app``)
GUARDED = ("profile", "item_index", "features", "scorer")  # the role names of responses, /ready and metrics
# roles with a built-in answer when their server fails: the unknown user (popularity), the recall order
LAST_RESORT = {"profile": "profiles", "scorer": "scorer"}
REFRESH_TICK_S = 0.1  # how often a backend's refresh thread asks it for its (rate-limited) version check


class BackgroundRefresh:
    """One daemon thread per backend calling ``maybe_refresh()``, started once per process (fork-safe)."""

    def __init__(self, backends: list[Lifecycle], tick_s: float = REFRESH_TICK_S) -> None:
        self.backends = backends
        self.tick_s = tick_s
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def ensure_running(self) -> None:
        """Cheap on every request: after a fork (gunicorn --preload) the child starts its own threads."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            for backend in self.backends:
                threading.Thread(target=self._run, args=(backend,), name=f"refresh-{backend.name}", daemon=True).start()

    def _run(self, backend: Lifecycle) -> None:
        while not self._stop.is_set():
            try:
                backend.maybe_refresh()
            except Exception:  # a version check must never stop the thread
                log.exception("version check of %s failed", backend.name)
            self._stop.wait(self.tick_s)

    def stop(self) -> None:
        self._stop.set()


def server_of(backend: object) -> str | None:
    """The server an adapter calls (its ``server`` attribute; None when it runs in process): roles that share
    one fail together within a request (``resilience.Deadline.failed_servers``)."""
    server = getattr(backend, "server", None)
    return str(server) if server else None


class RecService:
    def __init__(self, settings: Settings, backend_overrides: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.backends: Backends = build_backends(settings, backend_overrides)
        b = self.backends
        primaries = {"profile": b.profiles, "item_index": b.index, "features": b.features, "scorer": b.scorer}
        self.guards = {name: self._guard(name, server_of(primaries[name])) for name in GUARDED}
        self.live, self.experiments = build_live_feedback(settings, self._guard("events"))
        self.live.guard.server = server_of(self.live.log)
        self.catalog = ItemCatalogProvider(settings)  # titles for responses: not a role /ready waits for
        self.recommender = Recommender(
            self.backends, self.guards, self.metrics, self.live, self.experiments, self.catalog.current
        )
        for refreshing in self.snapshots():
            refreshing.on_switch = self._on_switch
        self.background = BackgroundRefresh([*self.backends.all(), self.catalog])

    def _guard(self, name: str, server: str | None = None) -> Guard:
        s = self.settings
        gauge = self.metrics.breaker_open.labels(name)
        gauge.set(0)
        breaker = CircuitBreaker(name, s.breaker_failures, s.breaker_reset_s, on_change=gauge.set)
        on_error = self.metrics.backend_errors.labels
        budget_ms = max(s.backend_timeout_ms, s.scorer_timeout_ms) if name == "scorer" else s.backend_timeout_ms
        return Guard(breaker, budget_ms / 1000, lambda b: on_error(b).inc(), server)

    def snapshots(self) -> list[Refreshing[Any]]:
        """Every versioned snapshot the backends hold in this process."""
        return [refreshing for backend in self.backends.all() for refreshing in backend.snapshots()]

    def loading(self) -> list[str]:
        """The snapshots that have neither loaded nor failed yet (a failed one has a fallback answering)."""
        return [r.name for r in self.snapshots() if not r.loaded and r.last_error is None]

    def _on_switch(self, component: str, previous: str | None, version: str) -> None:
        if previous is not None:
            self.metrics.version_switches.labels(component).inc()
        log.info("version switch", extra={"component": component, "previous": previous, "version": version})

    # -- requests ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background version checks of this process (idempotent)."""
        self.background.ensure_running()

    def recommend(
        self, userid: int, size: int, deadline: Deadline | None = None, explain: bool = False
    ) -> Recommendation:
        deadline = deadline or Deadline(self.settings.request_timeout_ms / 1000)
        self.background.ensure_running()
        try:
            return self.recommender.recommend(userid, size, deadline, self.catalog.current() if explain else None)
        except NotLoaded as exc:
            raise NotReady(f"the service is not ready: {exc}") from None
        except BackendError as exc:
            raise Unavailable(f"no fallback answered: {exc}") from None

    def ingest_events(self, events: list[Event]) -> AppendResult:
        """Check the events' items against the live catalogue and store them durably (``POST /ml/events``)."""
        result = self.live.ingest(events, catalogue_of(self.backends.features, self.backends.index))
        self.metrics.events.labels("stored").inc(result.n_stored)
        self.metrics.events.labels("duplicate").inc(result.n_duplicates)
        return result

    def wait_until_loaded(self, timeout_s: float = 120.0) -> None:
        """Block until every snapshot is loaded (tests, tools); ``NotReady`` with the reasons on time-out."""
        self.start()
        deadline = time.monotonic() + timeout_s
        while True:
            pending = [r for r in self.snapshots() if not r.loaded]
            if not pending:
                return
            if time.monotonic() > deadline:
                reasons = "; ".join(f"{r.name}: {r.last_error or 'loading'}" for r in pending)
                raise NotReady(f"not loaded after {timeout_s:.0f} s: {reasons}")
            time.sleep(0.05)

    # -- health ---------------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Per role: its backend's status, breaker and fallback; which roles are degraded.

        A role can answer when its primary is ready, or (degraded) when its fallback is ready; a
        server-backed profile store or scorer always can (popularity; the recall order). Ready means
        every role can answer; with ``ready_strict``, every primary must be ready."""
        self.start()
        b = self.backends
        primaries: dict[str, Lifecycle] = {"profile": b.profiles, "item_index": b.index,
                                           "features": b.features, "scorer": b.scorer}  # fmt: skip
        fallbacks = b.fallbacks()
        report: dict[str, Any] = {}
        degraded: list[str] = []
        unavailable: list[str] = []
        for role, backend in primaries.items():
            status = backend.status()
            entry = status.to_dict()
            entry["breaker"] = self.guards[role].breaker.state
            direct = status.ready and entry["breaker"] != "open"
            can_fall_back = role in LAST_RESORT and self.settings.backend_of(LAST_RESORT[role]) != "local"
            if role in fallbacks:
                fallback_status = fallbacks[role].status()
                entry["fallback"] = fallback_status.to_dict()
                can_fall_back = can_fall_back or fallback_status.ready
            report[role] = entry
            if not direct:
                (degraded if can_fall_back else unavailable).append(role)
        strict = self.settings.ready_strict
        ready = not unavailable and not (strict and degraded)
        return ready, {
            "backends": report,
            "degraded": degraded,
            "unavailable": unavailable,
            "strict": strict,
            "worker_pid": os.getpid(),
        }  # breakers and snapshots are per worker process

    def close(self) -> None:
        self.background.stop()
        self.live.log.close()
        for backend in self.backends.all():
            backend.close()
