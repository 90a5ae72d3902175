"""The item index against a live Elasticsearch 8 cluster, only where RECSYS_TEST_ES_URL names one.

Credentials and TLS come from the usual settings (RECSYS_ES_PASSWORD or RECSYS_ES_API_KEY,
RECSYS_ES_CA_CERTS, ...). Each test uses its own alias and deletes its indexes afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_exchange_center import es_layout as E
from data_exchange_center.settings import Settings, load_settings
from offline_to_online.recall.es_client import ElasticsearchApi, connect_es
from offline_to_online.recall.es_items import EsPublishReport, publish_items_to_es
from offline_to_online.recall.item_source import load_item_source
from offline_to_online.recall.stages import item_to_es
from tests.fixtures_artifacts import write_tiny_artifacts

ES_URL = os.environ.get("RECSYS_TEST_ES_URL", "")
pytestmark = pytest.mark.live


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    alias = f"test_items_{uuid.uuid4().hex[:8]}"
    yield load_settings({"es_url": ES_URL, "es_index_alias": alias, "profile": "compose", "data_dir": tmp_path})
    api = ElasticsearchApi(connect_es(load_settings({"es_url": ES_URL})))
    for name in api.list_indexes(E.index_pattern(alias)):
        api.delete_index(name)


def test_publish_twice_switches_the_alias_and_answers_queries(settings: Settings) -> None:
    tiny = write_tiny_artifacts(settings.data_dir)
    first, second = item_to_es(settings, progress=False), item_to_es(settings, progress=False)
    assert isinstance(first, EsPublishReport) and isinstance(second, EsPublishReport)
    api = ElasticsearchApi(connect_es(settings))
    alias = settings.es_index_alias
    assert api.alias_holders(alias) == [second.index]
    assert api.list_indexes(E.index_pattern(alias)) == sorted([first.index, second.index])  # the previous one stays
    assert first.index != second.index
    source = load_item_source(tiny.paths)
    for term, n in source.term_counts().items():
        assert api.count(alias, E.term_count_query(term)) == n
    hits = api.search(alias, E.term_recall_query(["Comedy", "Drama"], size=5, exclude_ids=[int(tiny.itemids[0])]))
    assert hits and all(h["_source"]["itemid"] != int(tiny.itemids[0]) for h in hits)
    docs = api.client.mget(index=alias, **E.neighbors_mget(tiny.itemids[:2].tolist()))["docs"]
    assert [d["_source"]["neighbors"] for d in docs] == [n.tolist() for n in source.neighbors[:2]]


def test_direct_publish_reports_exact_knn(settings: Settings) -> None:
    tiny = write_tiny_artifacts(settings.data_dir)
    api = ElasticsearchApi(connect_es(settings))
    report = publish_items_to_es(api, load_item_source(tiny.paths), settings.es_index_alias, progress=False)
    assert report.knn_agreement == 1.0


def test_the_online_adapter_reads_neighbours_and_excludes_every_seen_item(settings: Settings) -> None:
    """The online side's requests against the live cluster: ``_mget`` answers (no HTTP 400), the chain
    parameters come from the index's ``_meta``, and an exclusion list longer than the catalogue is obeyed."""
    from data_exchange_center.item_index import ItemIndex
    from online.backends.es_index import EsItemIndex

    tiny = write_tiny_artifacts(settings.data_dir)
    report = item_to_es(settings, progress=False)
    assert isinstance(report, EsPublishReport)
    provider = EsItemIndex(settings.model_copy(update={"backend_timeout_ms": 5000}))
    snapshot = provider._snapshot_of(report.index)
    assert snapshot.version == report.version and snapshot.params.max_triggers == 20
    local = ItemIndex.load(tiny.paths)
    triggers = tiny.itemids[:3]
    got, want = snapshot.index.neighbors_of(triggers), local.neighbors_of(triggers)
    assert got[0][:, : want[0].shape[1]].tolist() == want[0].tolist()
    seen = list(range(-20_000, 0)) + tiny.itemids[:-5].tolist()  # 20,000 unknown ids, then all but 5 items
    items, _ = snapshot.index.search_popular(50, seen)
    assert sorted(items.tolist()) == sorted(tiny.itemids[-5:].tolist())


def test_items_roll_back_on_the_alias_and_the_fallback_together(settings: Settings) -> None:
    from data_exchange_center import online_layout as L
    from offline_to_online.rollback import rollback

    write_tiny_artifacts(settings.data_dir)
    first, second = item_to_es(settings, progress=False), item_to_es(settings, progress=False)
    report = rollback(settings, "items")
    assert report.target == first.version and report.switched == ["elasticsearch alias", "embedded items"]
    api = ElasticsearchApi(connect_es(settings))
    assert api.alias_holders(settings.es_index_alias) == [first.index]
    assert L.read_current_version(L.items_store_dir(settings.paths)) == first.version
    assert rollback(settings, "items", to=second.version).target == second.version
    assert api.alias_holders(settings.es_index_alias) == [second.index]
