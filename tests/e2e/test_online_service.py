"""The whole pipeline on a small synthetic dataset, then the service under gunicorn and s2_client.py.

Runs every offline stage, publishes to the embedded stores, writes the evaluation report, starts
``gunicorn 'online.main.s1_server:create_app()'`` on a free loopback port, prints ranked lists through
``online/main/s2_client.py --users`` and checks with ``--replay`` that the served chain scores what the
offline evaluation reported (within 0.002).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.native_servers import free_port
from tests.pipeline_support import EMBEDDED_PUBLISH, copy_run, run_stages

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = copy_run(synthetic_run, tmp_path_factory.mktemp("online") / "run")
    run_stages(EMBEDDED_PUBLISH, folder)
    return folder


@pytest.fixture(scope="module")
def server_url(data_dir: Path) -> Iterator[str]:
    port = free_port()
    env = os.environ | {"RECSYS_DATA_DIR": str(data_dir), "RECSYS_PROFILE": "embedded", "RECSYS_LOG_LEVEL": "WARNING"}
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
             "--timeout", "120", "online.main.s1_server:create_app()"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def client(url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "online/main/s2_client.py"), "--url", url, "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip


def test_the_client_prints_ranked_lists(server_url: str, data_dir: Path) -> None:
    done = client(server_url, data_dir, "--users", "1", "2", "3", "--size", "10")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("user ") for line in lines) == 3
    assert sum(line.startswith("  last rated: ") for line in lines) == 3  # titles of the user's latest ratings
    rows = [line for line in lines if re.match(r"^\s+\d+  ", line)]
    assert len(rows) == 30 and all(re.search(r"\d\.\d{4}  (i2i|vector|term|popularity): \w", r) for r in rows)
    assert done.stdout.count("degraded: none") == 3


def test_replay_equals_the_offline_evaluation(server_url: str, data_dir: Path) -> None:
    done = client(server_url, data_dir, "--replay")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "served == offline within 0.002" in done.stdout and ", 0 failed" in done.stdout
