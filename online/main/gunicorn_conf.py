"""gunicorn settings of the online service.

    gunicorn -c python:online.main.gunicorn_conf 'online.main.s1_server:create_app()'

- Overload is shed, not queued: ``SheddingThreadWorker`` answers 503 (``Retry-After``, JSON) from its
  event loop once ``RECSYS_MAX_IN_FLIGHT`` requests (default 32) are with its threads, so at most
  that many minus ``threads`` wait in the thread pool's queue (a few ms each).
- ``/metrics`` sums every worker: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder per server unless set)
  is set here, before any worker imports ``prometheus_client``; the folder is emptied when the
  server starts and a dead worker's live gauges are removed (``child_exit``).

- Threads per worker: ``GUNICORN_THREADS``; by default 3 when the scorer or the profile store is a
  server (Triton, Redis: threads wait on them) and 2 when every role is in process. The work between
  backend calls is CPU-bound Python, so more threads mostly queue for the GIL, but on compose a third
  keeps the CPU busy while two wait. On ML-1M, 2 workers, the load generator on the same 2 cores, idle
  machine (2026-12-04, after the tower reuse and the connection balancing): compose saturation 406 /
  406 req/s with 3 threads against 395 / 388 / 397 with 2, open-loop p99 at 200 req/s 7.1 / 7.3 ms
  against 7.5 to 8.0; embedded the same with 3 as with 2 (822 / 805 vs 813 / 810 req/s, p99 4.2 / 4.5 vs
  4.1 / 4.3 ms) but under overload (256 connections) the third thread takes the GIL from the event loop
  that sheds: 11,330 vs 16,561 answers/s, rejections p50 15.8 vs 11.2 ms. Earlier runs: compose p99 at
  200 req/s 27.7 ms with 4 threads against 14.4 with 2; embedded 406 ms with 4 against 74 with 2.

Command-line options (``--workers``, ``--threads``, ``--bind``) override these values.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="recsys-metrics-")
os.environ[MULTIPROC_ENV] = metrics_dir  # before prometheus_client is imported anywhere


def default_threads() -> int:
    """3 when the scorer or the profile store runs on a server (the service's settings), else 2."""
    from data_exchange_center.settings import load_settings

    settings = load_settings()
    return 3 if {settings.backend_of("scorer"), settings.backend_of("profiles")} - {"local"} else 2


worker_class = "online.main.shedding_worker.SheddingThreadWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS") or default_threads())
backlog = 256  # connections waiting for accept(); a worker accepts at once and sheds on its own
keepalive = 5
timeout = 30
graceful_timeout = 10


def on_starting(server: Any) -> None:
    """Start with empty metrics: samples of a previous server in the same folder are not ours."""
    folder = Path(metrics_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges (breaker states) leave /metrics; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, metrics_dir)
