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
from offline_to_online.recall.s2_item_to_es import item_to_es
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
