"""Shared fixtures. Real servers come from scripts/native_servers.py (no Docker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.native_servers import RedisServer, ServerError, TritonVenv, ensure_triton_venv
from tests.pipeline_support import OFFLINE_STAGES, run_stages


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis-protocol server for the session (127.0.0.1, free port, temp dir).

    Shared: tests that kill or restart a server should start their own ``RedisServer``.
    Tests that use this one should use their own key prefix (or ``flushdb`` first)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline stages on a small synthetic dataset, run once for the session. Read-only: a module
    that publishes or changes it takes its own ``tests.pipeline_support.copy_run``."""
    data_dir = tmp_path_factory.mktemp("synthetic-run")
    run_stages(OFFLINE_STAGES, data_dir)
    return data_dir


@pytest.fixture(scope="session")
def triton_venv() -> TritonVenv:
    """The Triton virtual environment, made by scripts/setup_triton_venv.sh if needed (about
    40 s once, from PyPI). Fails (does not skip) when it cannot be made."""
    try:
        return ensure_triton_venv(run_setup=True)
    except ServerError as exc:
        pytest.fail(f"Triton venv unavailable: {exc}", pytrace=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``live`` test needs an outside service: without ``RECSYS_TEST_ES_URL`` it fails, never skips."""
    if os.environ.get("RECSYS_TEST_ES_URL"):
        return
    for item in items:
        if item.get_closest_marker("live"):
            item.add_marker(pytest.mark.usefixtures("_require_live_es"))


@pytest.fixture
def _require_live_es() -> None:
    pytest.fail("this live test needs an Elasticsearch cluster: set RECSYS_TEST_ES_URL", pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say loudly which tiers this run did not select, so a green run never hides them."""
    deselected = terminalreporter.stats.get("deselected", [])
    live = [item for item in deselected if item.get_closest_marker("live")]
    if live:
        terminalreporter.write_sep(
            "!", f"NOT RUN: {len(live)} live test(s) (Elasticsearch): set RECSYS_TEST_ES_URL to a cluster to run them"
        )
