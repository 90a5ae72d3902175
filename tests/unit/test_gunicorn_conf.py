"""Threads per gunicorn worker: 3 when a role is on a server, 2 when all are in process (chosen on the
benchmarks), else as set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def threads_with(env: dict[str, str], tmp_path: Path) -> int:
    """``threads`` of the config module, imported in a fresh process (it sets the metrics folder on import)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "GUNICORN_"))}
    clean |= {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO), **env}
    done = subprocess.run([sys.executable, "-c", "import online.main.gunicorn_conf as c; print(c.threads)"],
                          capture_output=True, text=True, cwd=REPO, env=clean, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 2),  # embedded: every role in process (a third thread slows the shedding under overload)
        ({"RECSYS_PROFILE": "compose"}, 3),  # roles on servers: a third thread runs while two wait
        ({"RECSYS_SCORER_BACKEND": "triton"}, 3),  # one role on a server is enough
        ({"RECSYS_PROFILE": "compose", "GUNICORN_THREADS": "8"}, 8),  # set explicitly
        ({"GUNICORN_THREADS": "1"}, 1),
    ],
)
def test_threads_follow_the_backends_unless_set(env: dict[str, str], expected: int, tmp_path: Path) -> None:
    assert threads_with(env, tmp_path) == expected
