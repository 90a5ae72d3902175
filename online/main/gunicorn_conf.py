"""gunicorn settings of the online service.

    gunicorn -c python:online.main.gunicorn_conf 'online.main.s1_server:create_app()'

- Overload is shed, not queued: ``SheddingThreadWorker`` answers 503 (``Retry-After``, JSON) from its
  event loop once ``RECSYS_MAX_IN_FLIGHT`` requests (default 32) are with its threads, so at most
  that many minus ``threads`` wait in the thread pool's queue (a few ms each).
- ``/metrics`` sums every worker: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder per server unless set)
  is set here, before any worker imports ``prometheus_client``; the folder is emptied when the
  server starts and a dead worker's live gauges are removed (``child_exit``).

- Threads per worker: ``GUNICORN_THREADS``, default 2 on every profile. The work between backend calls
  is CPU-bound Python, so more threads mostly queue for the GIL: on ML-1M, 2 workers, the load generator
  on the same 2 cores, idle machine, three runs each (2026-12-04), the compose profile (real Redis and
  tritonserver) gave open-loop p99 at 200 req/s median 14.4 ms with 2 threads, 13.9 ms with 3 and
  27.7 ms with 4 (one run with 1 error at 123 ms), and saturation 355 / 354 / 340 req/s; embedded, p99
  74 ms with 2 threads and 406 ms with 4 (an earlier, busy measurement).

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
threads = int(os.environ.get("GUNICORN_THREADS") or 2)
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
