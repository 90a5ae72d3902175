"""Shared stage helpers: bounded start-up retry with backoff, URL redaction, settings from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline_to_online.common import BackendUnavailable, redact_url, retry_startup, stage_parser, stage_settings

pytestmark = pytest.mark.unit


def test_retry_doubles_its_waits_and_names_the_backend_at_the_end() -> None:
    waits: list[float] = []

    def refuse() -> None:
        raise ConnectionError("connection refused")

    errors = (ConnectionError,)
    with pytest.raises(BackendUnavailable) as caught:
        retry_startup(
            refuse, backend="Redis", address="redis://h:1/0", hint="check X", errors=errors, sleep=waits.append
        )
    assert waits == [0.5, 1.0, 2.0, 4.0] and sum(waits) < 10
    assert str(caught.value) == "cannot reach Redis at redis://h:1/0 (connection refused); check X"


def test_retry_returns_once_the_backend_answers_and_lets_other_errors_through() -> None:
    answers: list[Exception | str] = [ConnectionError("starting"), ConnectionError("starting"), "ready"]

    def connect() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    waits: list[float] = []
    assert (
        retry_startup(connect, backend="b", address="a", hint="h", errors=(ConnectionError,), sleep=waits.append)
        == "ready"
    )
    assert waits == [0.5, 1.0]
    with pytest.raises(KeyError):
        retry_startup(lambda: {"y": 1}["x"], backend="b", address="a", hint="h", errors=(ConnectionError,))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:secret@h:6379/0", "redis://***@h:6379/0"),
        ("https://elastic:pw@es:9200", "https://***@es:9200"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_urls_are_redacted_in_messages(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_cli_profile_and_data_dir_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSYS_PROFILE", "compose")
    monkeypatch.setenv("RECSYS_REDIS_URL", "redis://env:6379/0")
    args = stage_parser("x").parse_args(["--profile", "embedded", "--data-dir", str(tmp_path)])
    settings = stage_settings(args, redis_url=None, redis_namespace="ns")
    assert (settings.profile, settings.data_dir, settings.redis_url) == ("embedded", tmp_path, "redis://env:6379/0")
    assert settings.redis_namespace == "ns"
    assert stage_settings(stage_parser("x").parse_args([])).profile == "compose"


def test_the_history_check_recomputes_the_published_rows_and_catches_a_changed_one(tmp_path: Path) -> None:
    import pandas as pd

    from offline_to_online.rank.score_check import check_history_features
    from tests.fixtures_artifacts import write_tiny_artifacts

    tiny = write_tiny_artifacts(tmp_path)
    result = check_history_features(tiny.paths, tiny.spec)
    assert result is not None and result.ok and result.max_abs_diff == 0.0
    assert result.n_rows == len(tiny.userids) - 1  # every user with a seen list (the first one has none)
    users = pd.read_parquet(tiny.paths.user_features_path)
    users.loc[5, "hist_mean_rating"] += 0.01  # a feature row that no timeline gives
    users.to_parquet(tiny.paths.user_features_path)
    changed = check_history_features(tiny.paths, tiny.spec)
    assert changed is not None and not changed.ok and "feature table" in changed.reference
