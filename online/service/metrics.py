"""Prometheus metrics of the service, one registry per app.

Under gunicorn with several workers set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder shared by the
workers: every worker then writes its samples there and ``/metrics`` (served by any worker) reports
the sum over all of them (``prometheus_client.multiprocess``).

The mode is fixed when ``prometheus_client`` is first imported (that is when it picks its value
storage), so it is read from there, not from the environment at exposition time: importing Feast sets
``PROMETHEUS_MULTIPROC_DIR`` in its own process as a side effect, which must not switch the exposition
of a single-process server to an empty folder.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = values.ValueClass is not values.MutexValue  # chosen by prometheus_client at its import
MULTIPROC_DIR = os.environ.get(MULTIPROC_ENV) if MULTIPROCESS else None
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
CANDIDATE_BUCKETS = (0, 1, 10, 25, 50, 100, 150, 200, 300, 400, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("recsys_requests_total", "HTTP requests by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)  # fmt: skip
        self.latency = Histogram("recsys_request_duration_seconds", "HTTP request latency by endpoint and outcome",
                                 ["endpoint", "outcome"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.step_latency = Histogram("recsys_step_duration_seconds", "latency of each step of the chain",
                                      ["step"], buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        self.backend_errors = Counter("recsys_backend_errors_total", "failed or refused backend calls",
                                      ["backend"], registry=r)  # fmt: skip
        self.degraded = Counter("recsys_degraded_responses_total", "responses served with a fallback, by component",
                                ["component"], registry=r)  # fmt: skip
        self.candidates = Histogram("recsys_candidates", "candidates contributed per channel per request",
                                    ["channel"], buckets=CANDIDATE_BUCKETS, registry=r)  # fmt: skip
        self.variant_requests = Counter("recsys_variant_requests_total", "recommendations per experiment variant",
                                        ["variant"], registry=r)  # fmt: skip
        self.events = Counter("recsys_events_total", "events of POST /ml/events by outcome (stored, duplicate)",
                              ["outcome"], registry=r)  # fmt: skip
        self.version_switches = Counter("recsys_version_switches_total", "hot switches to a new published version",
                                        ["component"], registry=r)  # fmt: skip
        # per worker process: under gunicorn each worker's series carries its pid label
        self.breaker_open = Gauge("recsys_breaker_open", "1 while a backend's circuit breaker is open (per worker)",
                                  ["component"], registry=r, multiprocess_mode="liveall")  # fmt: skip
        self.rejected = Counter("recsys_rejected_total", "requests refused at once (rate limit)",
                                ["reason"], registry=r)  # fmt: skip

        self._children: dict[tuple[str, str], Any] = {}

    def child(self, metric: str, label: str) -> Any:
        """The labelled child of ``metric`` (cached: ``labels()`` costs a lock and a dict per call)."""
        key = (metric, label)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = getattr(self, metric).labels(label)
        return found

    def exposition(self) -> bytes:
        """The text exposition; with ``PROMETHEUS_MULTIPROC_DIR``, summed over every worker process."""
        if MULTIPROCESS:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=MULTIPROC_DIR)
            return generate_latest(merged)
        return generate_latest(self.registry)
