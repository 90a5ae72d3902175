"""Published versions are self-contained: the service never reads the offline stages' working files.

What these tests prove: after a publish, deleting or rewriting every offline artifact (``dataset/``,
``preprocess/``, ``recall/``, ``rank/``) changes nothing that the service answers, a fresh service
starts from the published versions alone, and the Elasticsearch adapter takes a version's chain
parameters from the index itself (``tests/unit/test_es_items.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, write_json, write_parquet
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.settings import load_settings
from online.backends.local_index import load_index_snapshot
from online.main.s1_server import create_app, service_of
from tests.fixtures_artifacts import TinyArtifacts
from tests.online_support import QUOTAS, TRIGGERS, copy_published, expected_list, publish_tiny

pytestmark = pytest.mark.integration  # publishes through Feast (materializes)
OFFLINE_DIRS = ("dataset", "preprocess", "recall", "rank")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return publish_tiny(tmp_path_factory.mktemp("published"))


def served(data_dir: Path, userids: list[int], size: int = 10) -> dict[int, list[tuple[int, float]]]:
    settings = load_settings({"data_dir": data_dir, "log_level": "WARNING"})
    app = create_app(settings)
    try:
        service_of(app).wait_until_loaded(120)
        client = app.test_client()
        answers = {}
        for userid in userids:
            reply = client.post("/ml/rec", json={"userid": userid, "size": size})
            assert reply.status_code == 200, reply.get_json()
            assert reply.get_json()["degraded"] == []
            answers[userid] = [(e["itemid"], round(e["score"], 6)) for e in reply.get_json()["item_list"]]
        return answers
    finally:
        service_of(app).close()


def test_a_service_started_without_any_offline_artifact_serves_the_published_lists(
    tiny: TinyArtifacts, tmp_path: Path
) -> None:
    userids = [int(u) for u in tiny.userids[1:6]]
    expected = {u: expected_list(tiny.paths, u, 10) for u in userids}  # from the artifacts, before deleting
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "copy")
    for name in OFFLINE_DIRS:
        shutil.rmtree(data_dir / name, ignore_errors=True)
    assert not any((data_dir / name).exists() for name in OFFLINE_DIRS)
    answers = served(data_dir, userids)
    for userid, (items, scores) in expected.items():
        assert [i for i, _ in answers[userid]] == items.tolist()
        np.testing.assert_allclose([s for _, s in answers[userid]], scores, atol=1e-5)


def test_rerunning_offline_stages_changes_nothing_until_the_next_publish(tiny: TinyArtifacts, tmp_path: Path) -> None:
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "copy")
    userids = [int(u) for u in tiny.userids[1:6]]
    before = served(data_dir, userids)
    paths = load_settings({"data_dir": data_dir}).paths
    # an offline rerun with other results: reversed popularity, no neighbours, another chain configuration
    popularity = pd.read_parquet(paths.popularity_path)
    write_parquet(popularity.assign(**{S.SCORE: -popularity[S.SCORE]}), paths.popularity_path)
    write_parquet(pd.read_parquet(paths.item_neighbors_path).head(0), paths.item_neighbors_path)
    write_json({"max_triggers": 0}, paths.i2i_params_path)
    write_json({"like_weight": 5.0}, paths.ranking_policy_path)
    assert served(data_dir, userids) == before
    from offline_to_online.recall import s2_item_to_es

    assert s2_item_to_es.main(["--data-dir", str(data_dir), "--profile", "embedded", "--quiet"]) == 0
    assert served(data_dir, userids) != before  # the publish is what changes the answers


def test_the_local_index_loads_the_copies_and_refuses_a_damaged_one(tiny: TinyArtifacts, tmp_path: Path) -> None:
    data_dir = copy_published(tiny.paths.data_dir, tmp_path / "copy")
    store = L.items_store_dir(load_settings({"data_dir": data_dir}).paths)
    version = L.read_current_version(store)
    assert version is not None
    for name in OFFLINE_DIRS:
        shutil.rmtree(data_dir / name, ignore_errors=True)
    snapshot = load_index_snapshot(store, QUOTAS, version)
    assert snapshot.version == version and snapshot.params.triggers == TRIGGERS
    reference = ItemIndex.load(tiny.paths)
    assert [a.tolist() for a in snapshot.index.search_popular(7)] == [a.tolist() for a in reference.search_popular(7)]
    (store / version / L.ITEM_NEIGHBORS_FILE).write_bytes(b"\0" * 10)
    with pytest.raises(ArtifactError, match="item_neighbors.parquet does not match"):
        load_index_snapshot(store, QUOTAS, version)
