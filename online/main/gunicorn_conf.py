"""gunicorn settings of the online service.

    gunicorn -c python:online.main.gunicorn_conf 'online.main.s1_server:create_app()'

- Overload is shed, not queued: ``SheddingThreadWorker`` answers 503 (``Retry-After``, JSON) from its
  event loop once ``RECSYS_MAX_IN_FLIGHT`` requests (default 32) are with its threads, so at most
  that many minus ``threads`` wait in the thread pool's queue (a few ms each).
- ``/metrics`` sums every worker: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder per server unless set)
  is set here, before any worker imports ``prometheus_client``; the folder is emptied when the
  server starts and a dead worker's live gauges are removed (``child_exit``).

- Threads per worker: ``GUNICORN_THREADS``, default 3 on every profile. The work between backend calls
  is CPU-bound Python, so more threads mostly queue for the GIL, but a third one keeps the CPU busy
  while the other two wait on Redis and Triton. On ML-1M, 2 workers, the load generator on the same
  2 cores, idle machine (2026-12-04, after the tower reuse and the connection balancing): compose
  saturation 406 / 406 req/s with 3 threads against 395 / 388 / 397 with 2, open-loop p99 at 200 req/s
  7.1 / 7.3 ms against 7.5 to 8.0; embedded 822 / 805 req/s against 813 / 810, p99 4.2 / 4.5 ms against
  4.1 / 4.3 (no difference). Earlier runs: compose p99 at 200 req/s 14.4 ms with 2, 13.9 ms with 3 and
  27.7 ms with 4 threads; embedded 74 ms with 2 and 406 ms with 4 (a busy measurement).

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

worker_class = "online.main.shedding_worker.SheddingThreadWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS") or 3)
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
