"""Artifact checks of the user and item sources, the embedded publishes, and the item stage's exits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_json, write_json, write_npz, write_parquet
from data_exchange_center.item_index import ItemIndex
from offline_to_online.recall import s2_item_to_es
from offline_to_online.recall.embedded_items import publish_items_embedded
from offline_to_online.recall.embedded_users import load_version, publish_users_embedded
from offline_to_online.recall.item_source import chain_parameters, load_item_source
from offline_to_online.recall.redis_users import compare_records
from offline_to_online.recall.user_source import load_user_source
from scripts.native_servers import free_port
from tests.fixtures_artifacts import write_tiny_artifacts

pytestmark = pytest.mark.unit


def test_user_source_aligns_the_union_of_users(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    source = load_user_source(tiny.paths)
    assert source.userids.tolist() == sorted(tiny.userids.tolist())
    first, last = source.record(0), source.record(source.n_users - 1)
    assert len(first.seen) == 0 and first.vector is not None  # no seen items, a vector
    assert last.vector is None and len(last.seen) > 0  # no vector, seen items
    profiles = pd.read_parquet(tiny.paths.user_profiles_path).set_index(S.USER_ID)
    assert source.record(3).terms == list(profiles.loc[source.userids[3], S.TERMS])


def test_item_source_orders_neighbours_by_weight(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    source = load_item_source(tiny.paths)
    neighbors = pd.read_parquet(tiny.paths.item_neighbors_path)
    expected = neighbors[neighbors[S.ITEM_ID] == source.itemids[2]].sort_values(S.WEIGHT, ascending=False)
    assert source.neighbors[2].tolist() == expected[S.NEIGHBOR].tolist()
    genre_counts = pd.read_parquet(tiny.paths.item_terms_path)[S.TERMS].explode().value_counts()
    assert source.term_counts() == {str(k): int(v) for k, v in sorted(genre_counts.items())}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("item_dim", "user vectors have dim 8 but item vectors dim 3"),
        ("unknown_neighbor", "item_neighbors.parquet: 1 item ids are not in item_terms.parquet"),
        ("duplicate_vector", "item_vectors.npz: duplicate ids"),
        ("nan_vector", "NaN or infinite"),
        ("missing_column", "lacks columns ['score']"),
    ],
)
def test_bad_item_artifacts_are_refused(tmp_path: Path, damage: str, message: str) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    paths, ids = tiny.paths, tiny.itemids
    if damage == "item_dim":
        write_npz(paths.item_vectors_path, ids=ids, vectors=np.zeros((len(ids), 3), np.float32))
    elif damage == "unknown_neighbor":
        frame = pd.read_parquet(paths.item_neighbors_path)
        frame.loc[0, S.NEIGHBOR] = 999_999
        write_parquet(frame, paths.item_neighbors_path)
    elif damage == "duplicate_vector":
        write_npz(paths.item_vectors_path, ids=np.r_[ids[:-1], ids[0]], vectors=np.ones((len(ids), 8), np.float32))
    elif damage == "nan_vector":
        write_npz(paths.item_vectors_path, ids=ids, vectors=np.full((len(ids), 8), np.nan, np.float32))
    else:
        write_parquet(pd.DataFrame({S.ITEM_ID: ids}), paths.popularity_path)
    with pytest.raises(ArtifactError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_item_source(paths)
    assert s2_item_to_es.main(["--data-dir", str(tmp_path), "--profile", "embedded", "--quiet"]) == 2
    assert not L.items_store_dir(paths).exists()


def test_embedded_users_round_trip_and_keep_one_previous_version(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    source = load_user_source(tiny.paths)
    store = L.users_store_dir(tiny.paths)
    reports = [publish_users_embedded(store, source) for _ in range(3)]
    assert L.read_current_version(store) == reports[-1].version
    assert L.list_versions(store) == [reports[1].version, reports[2].version]  # current + one previous
    records = load_version(store / reports[-1].version)
    assert all(compare_records(source.record(i), records[int(u)]) is None for i, u in enumerate(source.userids))
    assert read_json(store / reports[-1].version / L.MANIFEST_FILE)["n_users"] == source.n_users
    for published in [store / "CURRENT", *(store / reports[-1].version).iterdir()]:
        assert published.stat().st_mode & 0o044 == 0o044, published  # the serving containers read them


def test_an_embedded_item_version_holds_copies_of_everything_it_serves(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    chain = chain_parameters(tiny.paths)
    report = publish_items_embedded(tiny.paths, chain)
    folder = report.manifest_path.parent
    manifest = read_json(report.manifest_path)
    assert L.read_current_version(L.items_store_dir(tiny.paths)) == report.version
    assert sorted(manifest["files"]) == sorted(p.name for p in folder.iterdir() if p.name != L.MANIFEST_FILE)
    assert manifest["files"]["popularity.parquet"]["copied_from"] == "recall/popularity.parquet"
    assert L.read_chain_file(folder) == chain == {"max_triggers": 20, "like_weight": 1.0, "prior_weight": 0.01}
    before = ItemIndex.from_files(L.ItemFiles.in_version(folder)).search_popular(5)
    # rerunning (or deleting) the offline artifacts leaves the published version as it was
    write_parquet(pd.DataFrame({S.ITEM_ID: tiny.itemids, S.SCORE: np.arange(len(tiny.itemids), dtype=np.float32)}),
                  tiny.paths.popularity_path)  # fmt: skip
    for path in (tiny.paths.item_neighbors_path, tiny.paths.item_vectors_path, *tiny.paths.chain_params_paths):
        path.unlink()
    assert L.verify_version_files(folder) == manifest
    after = ItemIndex.from_files(L.ItemFiles.in_version(folder)).search_popular(5)
    assert [a.tolist() for a in after] == [b.tolist() for b in before]
    # a damaged copy is refused by the loader's checksum check
    (folder / "popularity.parquet").write_bytes(b"not parquet")
    with pytest.raises(ArtifactError, match="popularity.parquet does not match"):
        L.verify_version_files(folder)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "missing artifact"),
        ({"max_triggers": 20}, "is missing \\(no like_weight\\): the offline run stopped before"),
        ({"like_weight": 0.5}, "lacks max_triggers"),
        ({"max_triggers": 2.5, "like_weight": 0.5}, "max_triggers = 2.5 is not a whole number"),
        ({"max_triggers": 20, "like_weight": -1}, "like_weight = -1 is not a finite non-negative number"),
        ({"max_triggers": 50, "half_life": -5.0, "like_weight": 1}, "half_life = -5.0 is not a finite non-negative"),
    ],
)
def test_a_half_finished_chain_configuration_is_not_published(
    tmp_path: Path, config: dict[str, float] | None, message: str
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    for path in tiny.paths.chain_params_paths:
        path.unlink()
    if config is not None:  # the trigger keys go to recall/3's file, the policy keys to the report's
        write_json({k: v for k, v in config.items() if k != "like_weight"}, tiny.paths.i2i_params_path)
        if "like_weight" in config:
            write_json({"like_weight": config["like_weight"]}, tiny.paths.ranking_policy_path)
    with pytest.raises(ArtifactError, match=message):
        chain_parameters(tiny.paths)
    assert s2_item_to_es.main(["--data-dir", str(tmp_path), "--profile", "embedded", "--quiet"]) == 2
    assert not L.items_store_dir(tiny.paths).exists()


def test_prune_keeps_the_live_and_the_previously_live_version(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    chain = chain_parameters(tiny.paths)
    first, second = (publish_items_embedded(tiny.paths, chain).version for _ in range(2))
    store = L.items_store_dir(tiny.paths)
    L.write_current_version(store, first)  # a rollback to the first
    third = publish_items_embedded(tiny.paths, chain)
    assert third.previous == first and third.deleted == [second]
    assert L.list_versions(store) == [first, third.version]


def test_unreachable_elasticsearch_is_one_line_and_exit_3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_tiny_artifacts(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    args = ["--data-dir", str(tmp_path), "--profile", "compose", "--es-url", url, "--connect-attempts", "1"]
    with caplog.at_level(logging.ERROR):
        assert s2_item_to_es.main(args) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"cannot reach Elasticsearch at {url}" in errors[0] and "RECSYS_ES_URL" in errors[0]


def test_an_offline_rerun_that_has_not_reached_its_report_is_not_published(tmp_path: Path) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    args = ["--data-dir", str(tmp_path), "--profile", "embedded", "--quiet"]
    assert s2_item_to_es.main(args) == 0
    live = L.read_current_version(L.items_store_dir(tiny.paths))
    popularity = pd.read_parquet(tiny.paths.popularity_path)  # recall/1 reran; the report has not yet
    write_parquet(popularity.assign(**{S.SCORE: popularity[S.SCORE] + 1}), tiny.paths.popularity_path)
    with pytest.raises(ArtifactError, match="recall/popularity.parquet changed after ranking_policy.json"):
        chain_parameters(tiny.paths)
    assert s2_item_to_es.main(args) == 2 and L.read_current_version(L.items_store_dir(tiny.paths)) == live
    write_json(read_json(tiny.paths.ranking_policy_path), tiny.paths.ranking_policy_path)  # the report ran
    assert s2_item_to_es.main(args) == 0 and L.read_current_version(L.items_store_dir(tiny.paths)) != live
