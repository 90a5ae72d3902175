"""Shared fixtures. Real servers come from tests/servers.py (no Docker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import RedisServer, ServerError, TritonVenv, ensure_triton_venv


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis-protocol server for the session (127.0.0.1, free port, temp dir).

    Shared: tests that kill or restart a server should start their own ``RedisServer``.
    Tests that use this one should use their own key prefix (or ``flushdb`` first)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def triton_venv() -> TritonVenv:
    """The Triton virtual environment, made by scripts/setup_triton_venv.sh if needed (about
    40 s once, from PyPI). Fails (does not skip) when it cannot be made."""
    try:
        return ensure_triton_venv(run_setup=True)
    except ServerError as exc:
        pytest.fail(f"Triton venv unavailable: {exc}", pytrace=False)
