"""Time budgets and circuit breakers: how a slow or dead backend is kept from hurting requests.

``Deadline`` is a request's time budget; every backend call gets ``min(backend budget, time left)``.
It also remembers the servers that failed during the request: roles served by one server (the user
profiles, the event log and Feast's online store all live in one Redis on compose) do not each wait
out their budget on a server that has just timed out for this request.
``CircuitBreaker`` counts consecutive failures of one backend; at ``failures`` it opens and refuses
calls at once (the chain uses its fallback), and after ``reset_s`` it lets one trial call through
(half-open): a success closes it, a failure opens it again for another ``reset_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from online.backends.base import BackendError, NotLoaded

T = TypeVar("T")
MIN_CALL_BUDGET_S = 0.002  # below this a remote call is not worth starting: use the fallback


class Deadline:
    """A request's time budget, counted from its start."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.start = clock()
        self.end = self.start + budget_s
        self.failed_servers: set[str] = set()  # servers that failed a call of this request

    def remaining(self) -> float:
        return max(self.end - self._clock(), 0.0)

    def call_budget(self, backend_budget_s: float) -> float:
        return min(backend_budget_s, self.remaining())


class CircuitBreaker:
    """Consecutive-failure breaker for one backend (thread-safe)."""

    def __init__(
        self,
        name: str,
        failures: int,
        reset_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = name
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._on_change = on_change  # called with True when the breaker opens, False when it closes
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half_open" if self._clock() - self._opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """May a call go through now? (In half-open state only one trial call at a time.)"""
        if self._opened_at is None:  # fast path without the lock: closed
            return True
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at < self.reset_s or self._trial_running:
                return False
            self._trial_running = True
            return True

    def record_success(self) -> None:
        if self._consecutive == 0 and self._opened_at is None:
            return
        with self._lock:
            was_open = self._opened_at is not None
            self._consecutive = 0
            self._opened_at = None
            self._trial_running = False
        if was_open and self._on_change is not None:
            self._on_change(False)

    def record_failure(self) -> None:
        with self._lock:
            was_open = self._opened_at is not None
            self._consecutive += 1
            self._trial_running = False
            if self._opened_at is not None or self._consecutive >= self.failures:
                self._opened_at = self._clock()
            opened = not was_open and self._opened_at is not None
        if opened and self._on_change is not None:
            self._on_change(True)


class Guard:
    """Runs one backend's calls through its breaker and a time budget; failures become ``BackendError``."""

    def __init__(
        self, breaker: CircuitBreaker, budget_s: float, on_error: Callable[[str], None], server: str | None = None
    ) -> None:
        self.breaker = breaker
        self.budget_s = budget_s
        self._on_error = on_error
        self.server = server  # the server this role calls (None: in process); shared by roles on one server

    @property
    def name(self) -> str:
        return self.breaker.name

    def call(self, deadline: Deadline, fn: Callable[[float], T]) -> T:
        """``fn(timeout_s)``; raises ``BackendError`` when the breaker is open, no time is left, or it fails."""
        timeout_s = deadline.call_budget(self.budget_s)
        if timeout_s < MIN_CALL_BUDGET_S:
            raise BackendError(self.name, "no time left in the request budget")
        if self.server is not None and self.server in deadline.failed_servers:
            raise BackendError(self.name, "its server failed earlier in this request")
        if not self.breaker.allow():
            raise BackendError(self.name, "circuit breaker open")
        try:
            result = fn(timeout_s)
        except NotLoaded:
            raise  # nothing published yet: the edge answers 503, it is no backend failure
        except Exception as exc:
            self.breaker.record_failure()
            self._on_error(self.name)
            if self.server is not None:
                deadline.failed_servers.add(self.server)
            if isinstance(exc, BackendError):
                raise
            raise BackendError(self.name, f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        self.breaker.record_success()
        return result
