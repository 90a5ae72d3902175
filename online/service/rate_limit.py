"""Per-client rate limits: a token bucket per API key (or client address), off by default.

``rate_limit_rps`` tokens per second refill each bucket up to ``rate_limit_burst``; a request takes
one token or is answered 429 at once with ``Retry-After`` (seconds until a token is back). Buckets
live in each worker process (a client spread over N workers gets up to N times the rate); the table
forgets its least recently seen clients beyond ``MAX_CLIENTS``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_CLIENTS = 100_000


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """0 when ``client`` may go now (a token is taken), else whole seconds until it may retry."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return 0 if allowed else max(1, math.ceil((1.0 - tokens) / self.rate_per_s))
