"""Version ids, embedded-store pointers and model-repository look-ups (data_exchange_center/online_layout.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from data_exchange_center import online_layout as L
from data_exchange_center.paths import ArtifactPaths

pytestmark = pytest.mark.unit


def test_version_id_is_utc_time_to_the_microsecond_and_sorts_by_time() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert L.new_version(moment, "0a1b") == "20240102T030405000006Z-0a1b"
    later = L.new_version(datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=UTC), "0000")
    assert L.is_version(later) and later > L.new_version(moment, "ffff")
    assert L.is_version(L.new_version())
    assert not L.is_version("20240102T030405Z-0a1b") and not L.is_version(".tmp-20240102T030405000006Z-0a1b")


def test_current_pointer_switches_only_to_an_existing_folder(tmp_path: Path) -> None:
    store = tmp_path / "users"
    assert L.read_current_version(store) is None and L.current_version_dir(store) is None
    version = L.new_version()
    with pytest.raises(FileNotFoundError):
        L.write_current_version(store, version)
    (store / version).mkdir(parents=True)
    L.write_current_version(store, version)
    assert (store / "CURRENT").read_text() == version + "\n"
    assert L.current_version_dir(store) == store / version
    with pytest.raises(ValueError, match="not a version"):
        L.write_current_version(store, "latest")


def test_list_versions_skips_temporary_and_foreign_folders(tmp_path: Path) -> None:
    a, b = "20240102T030405000006Z-0a1b", "20250102T030405000006Z-0000"
    for name in (b, a, ".tmp-" + a, "notes"):
        (tmp_path / name).mkdir()
    assert L.list_versions(tmp_path) == [a, b]


def test_model_versions_and_latest_model_path(tmp_path: Path) -> None:
    paths = ArtifactPaths(tmp_path)
    repo = paths.model_repository_dir
    assert L.python_model_repository_dir(paths) == tmp_path / "model_repository_python"
    assert L.latest_model_path(repo) is None
    for version in (1, 2, 10):
        (repo / "ml_rec" / str(version)).mkdir(parents=True)
        (repo / "ml_rec" / str(version) / "model.onnx").write_bytes(b"x")
    (repo / "ml_rec" / "11").mkdir()  # empty: a version still being written elsewhere does not count
    assert L.model_versions(repo) == [1, 2, 10]
    assert L.latest_model_path(repo) == repo / "ml_rec" / "10" / "model.onnx"
