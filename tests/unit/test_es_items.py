"""The Elasticsearch item index: golden request bodies, client options, and the publish sequence.

No Elasticsearch server runs here: the bodies are compared with golden values, and the publish
sequence runs against ``FakeEsApi``, an in-memory implementation of this stage's own ``EsApi``
interface (never of the client library). Live tests: tests/integration/test_o2o_es_live.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from data_exchange_center import es_layout as E
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.settings import load_settings
from offline_to_online.common import PublishVerificationError
from offline_to_online.recall.es_client import es_client_options
from offline_to_online.recall.es_items import bulk_actions, publish_items_to_es
from offline_to_online.recall.item_source import ItemSource, load_item_source
from online.backends.es_index import EsIndex, EsItemIndex
from tests.fixtures_artifacts import write_tiny_artifacts

pytestmark = pytest.mark.unit

VERSION = "20240102T030405000006Z-0a1b"


def two_items() -> ItemSource:
    return ItemSource(
        itemids=np.array([5, 8], dtype=np.int64),
        terms=[["Comedy", "Drama"], []],
        vector_rows=np.array([0, -1], dtype=np.int64),
        vectors=np.array([[0.5, -1.0]], dtype=np.float32),
        vector_ids=np.array([5], dtype=np.int64),
        popularity=np.array([3.0, 0.0], dtype=np.float32),
        neighbors=[np.array([8], dtype=np.int64), np.zeros(0, dtype=np.int64)],
        neighbor_weights=[np.array([0.25], dtype=np.float32), np.zeros(0, dtype=np.float32)],
    )


def test_mapping_is_golden() -> None:
    chain = {"max_triggers": 20, "like_weight": 0.5, "prior_weight": 0.01}
    assert E.index_mapping(32, E.index_meta(VERSION, chain)) == {
        "_meta": {"version": VERSION, "chain": {"max_triggers": 20, "like_weight": 0.5, "prior_weight": 0.01}},
        "dynamic": "strict",
        "properties": {
            "itemid": {"type": "long"},
            "terms": {"type": "keyword"},
            "vector": {
                "type": "dense_vector",
                "dims": 32,
                "index": True,
                "similarity": "max_inner_product",
                "index_options": {"type": "hnsw", "m": 16, "ef_construction": 100},
            },
            "popularity": {"type": "float"},
            "neighbors": {"type": "long", "index": False},
            "neighbor_weights": {"type": "float", "index": False},
        },
    }
    assert E.index_settings() == {"index": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1"}}
    with pytest.raises(ValueError, match="dims"):
        E.index_mapping(0)


def test_index_names_are_lower_case_per_version() -> None:
    assert E.index_name("recsys_items", VERSION) == "recsys_items-20240102t030405000006z-0a1b"
    assert E.index_pattern("Recsys_Items") == "recsys_items-*"


def test_bulk_actions_are_golden() -> None:
    assert list(bulk_actions(two_items(), "idx")) == [
        {
            "_op_type": "index",
            "_index": "idx",
            "_id": "5",
            "_source": {
                "itemid": 5,
                "terms": ["Comedy", "Drama"],
                "popularity": 3.0,
                "neighbors": [8],
                "neighbor_weights": [0.25],
                "vector": [0.5, -1.0],
            },
        },
        {
            "_op_type": "index",
            "_index": "idx",
            "_id": "8",
            "_source": {"itemid": 8, "terms": [], "popularity": 0.0, "neighbors": [], "neighbor_weights": []},
        },
    ]


def test_alias_switch_is_one_call_with_remove_and_add() -> None:
    assert E.alias_switch_actions("a", "a-2", ["a-1", "a-0", "a-1"]) == {
        "actions": [
            {"remove": {"index": "a-0", "alias": "a"}},
            {"remove": {"index": "a-1", "alias": "a"}},
            {"add": {"index": "a-2", "alias": "a", "is_write_index": True}},
        ]
    }
    assert E.alias_switch_actions("a", "a-2", []) == {
        "actions": [{"add": {"index": "a-2", "alias": "a", "is_write_index": True}}]
    }


def test_query_bodies_are_golden() -> None:
    assert E.term_count_query("Sci-Fi") == {"query": {"term": {"terms": "Sci-Fi"}}}
    assert E.knn_query([1, 0.5], k=3, exclude_ids=[7]) == {
        "knn": {
            "field": "vector",
            "query_vector": [1.0, 0.5],
            "k": 3,
            "num_candidates": 100,
            "filter": {"bool": {"must_not": [{"ids": {"values": ["7"]}}]}},
        },
        "size": 3,
        "_source": ["itemid"],
    }
    assert E.term_recall_query(["Comedy"], size=2) == {
        "size": 2,
        "query": {
            "bool": {
                "should": [{"constant_score": {"filter": {"term": {"terms": "Comedy"}}, "boost": 1.0}}],
                "minimum_should_match": 1,
                "must_not": [],
            }
        },
        "sort": [{"_score": "desc"}, {"popularity": "desc"}, {"itemid": "asc"}],
        "_source": ["itemid", "popularity"],
    }
    assert E.neighbors_mget([5, 8]) == {"ids": ["5", "8"], "source": ["itemid", "neighbors", "neighbor_weights"]}
    assert E.popularity_query(1, [3])["query"] == {
        "bool": {"must": [{"match_all": {}}], "must_not": [{"ids": {"values": ["3"]}}]}
    }


@pytest.mark.parametrize("inner_product", [-3.0, -0.5, 0.0, 0.25, 7.0])
def test_score_transform_inverts(inner_product: float) -> None:
    score = inner_product + 1 if inner_product >= 0 else 1 / (1 - inner_product)  # Elasticsearch's transform
    assert E.inner_product_from_score(score) == pytest.approx(inner_product)


def test_client_options_take_credentials_and_tls_from_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    basic = load_settings({"es_url": "https://es:9200", "es_password": "pw", "es_ca_certs": ca}, environ={})
    options = es_client_options(basic)
    assert options["basic_auth"] == ("elastic", "pw") and "api_key" not in options
    assert options["verify_certs"] is True and options["ca_certs"] == str(ca)
    keyed = load_settings({"es_url": "https://es:9200", "es_password": "pw", "es_api_key": "k"}, environ={})
    assert es_client_options(keyed)["api_key"] == "k" and "basic_auth" not in es_client_options(keyed)
    plain = es_client_options(load_settings({"es_url": "http://es:9200", "es_verify_certs": False}, environ={}))
    assert plain == {"hosts": ["http://es:9200"], "request_timeout": 60.0, "max_retries": 2}
    assert isinstance(basic.es_password, SecretStr) and "pw" not in repr(basic)


# --- the publish sequence on our own interface --------------------------------------------------------
class FakeEsApi:
    """In-memory ``EsApi``: term counts and exact kNN over the stored documents, and a request log."""

    def __init__(self, drop_term: str | None = None) -> None:
        self.indexes: dict[str, dict[str, dict[str, Any]]] = {}
        self.bodies: dict[str, Any] = {}
        self.aliases: dict[str, set[str]] = {}
        self.calls: list[str] = []
        self.drop_term = drop_term

    def index_exists(self, name: str) -> bool:
        return name in self.indexes or name in self.aliases

    def alias_holders(self, alias: str) -> list[str]:
        return sorted(self.aliases.get(alias, set()))

    def list_indexes(self, pattern: str) -> list[str]:
        return sorted(n for n in self.indexes if n.startswith(pattern.rstrip("*")))

    def create_index(self, name: str, settings: dict[str, Any], mappings: dict[str, Any]) -> None:
        self.calls.append(f"create {name}")
        self.indexes[name], self.bodies[name] = {}, {"settings": settings, "mappings": mappings}

    def bulk(self, actions: Iterator[dict[str, Any]], n_actions: int, progress: bool) -> int:
        self.calls.append("bulk")
        for action in actions:
            source = dict(action["_source"])
            if self.drop_term in source["terms"]:
                source["terms"] = [t for t in source["terms"] if t != self.drop_term]
            self.indexes[action["_index"]][action["_id"]] = source
        return n_actions

    def put_settings(self, name: str, settings: dict[str, Any]) -> None:
        self.calls.append(f"settings {name}")

    def refresh_and_merge(self, name: str) -> None:
        self.calls.append(f"refresh {name}")

    def count(self, name: str, body: dict[str, Any] | None) -> int:
        docs = self.indexes[name].values()
        if body is None:
            return len(docs)
        term = body["query"]["term"]["terms"]
        return sum(term in d["terms"] for d in docs)

    def search(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        query = np.asarray(body["knn"]["query_vector"], dtype=np.float32)
        docs = [d for d in self.indexes[name].values() if "vector" in d]
        docs.sort(key=lambda d: -float(np.asarray(d["vector"], dtype=np.float32) @ query))
        return [{"_source": {"itemid": d["itemid"]}} for d in docs[: body["knn"]["k"]]]

    def update_aliases(self, body: dict[str, Any]) -> None:
        self.calls.append("aliases")
        for action in body["actions"]:
            ((kind, spec),) = action.items()
            holders = self.aliases.setdefault(spec["alias"], set())
            holders.discard(spec["index"]) if kind == "remove" else holders.add(spec["index"])

    def delete_index(self, name: str) -> None:
        self.calls.append(f"delete {name}")
        self.indexes.pop(name, None)
        for holders in self.aliases.values():
            holders.discard(name)

    def mapping_meta(self, name: str) -> dict[str, Any]:
        return dict(self.bodies[name]["mappings"].get("_meta") or {})


def test_publish_builds_verifies_switches_and_cleans_up(tmp_path: Path) -> None:
    source = load_item_source(write_tiny_artifacts(tmp_path).paths)
    api = FakeEsApi()
    api.indexes["items-leftover"] = {}  # what an interrupted run left
    chain = {"max_triggers": 3, "like_weight": 0.5, "prior_weight": 0.01}
    first = publish_items_to_es(api, source, "items", version=VERSION, chain=chain, progress=False)
    new = "items-20240102t030405000006z-0a1b"
    assert api.calls == [
        f"create {new}",
        "bulk",
        f"settings {new}",
        f"refresh {new}",
        "aliases",
        "delete items-leftover",
    ]
    assert api.bodies[new]["mappings"] == E.index_mapping(tiny_dim := source.vector_dim, E.index_meta(VERSION, chain))
    assert tiny_dim == 8 and api.bodies[new]["mappings"]["_meta"]["chain"] == chain
    assert api.aliases["items"] == {new} and first.knn_agreement == 1.0
    assert first.term_counts == source.term_counts() and sum(first.term_counts.values()) > 0
    second = publish_items_to_es(api, source, "items", progress=False)
    # the previous index stays (a service that resolved the alias a moment ago still reads it; rollback)
    assert second.previous_indexes == [new] and second.deleted == []
    assert api.aliases["items"] == {second.index} and sorted(api.indexes) == sorted([new, second.index])
    third = publish_items_to_es(api, source, "items", progress=False)  # older ones go at a later publish
    assert third.deleted == [new] and sorted(api.indexes) == sorted([second.index, third.index])


def test_a_wrong_term_count_keeps_the_alias_and_drops_the_new_index(tmp_path: Path) -> None:
    source = load_item_source(write_tiny_artifacts(tmp_path).paths)
    api = FakeEsApi()
    live = publish_items_to_es(api, source, "items", progress=False)
    api.drop_term = "Drama"
    with pytest.raises(PublishVerificationError, match="term 'Drama' matches"):
        publish_items_to_es(api, source, "items", progress=False)
    assert api.aliases["items"] == {live.index} and list(api.indexes) == [live.index]


@pytest.mark.parametrize("failure", ["merge timeout", "bulk connection lost", "interrupted"])
def test_a_failed_build_deletes_the_new_index_and_keeps_the_alias(tmp_path: Path, failure: str) -> None:
    source = load_item_source(write_tiny_artifacts(tmp_path).paths)
    api = FakeEsApi()
    live = publish_items_to_es(api, source, "items", progress=False)
    error: BaseException = {"merge timeout": TimeoutError("forcemerge timed out"),
                            "bulk connection lost": ConnectionError("reset by peer"),
                            "interrupted": KeyboardInterrupt()}[failure]  # fmt: skip
    if failure == "merge timeout":
        api.refresh_and_merge = lambda name: (_ for _ in ()).throw(error)  # type: ignore[method-assign]
    else:
        api.bulk = lambda *args: (_ for _ in ()).throw(error)  # type: ignore[method-assign]
    with pytest.raises(type(error)):
        publish_items_to_es(api, source, "items", progress=False)
    assert api.aliases["items"] == {live.index} and list(api.indexes) == [live.index]  # no orphan index


def test_a_knn_that_misses_the_best_item_is_refused(tmp_path: Path) -> None:
    source = load_item_source(write_tiny_artifacts(tmp_path).paths)
    api = FakeEsApi()
    api.search = lambda name, body: []  # type: ignore[method-assign]  # an index whose kNN finds nothing
    with pytest.raises(PublishVerificationError, match="kNN found the exact best item for 0 of"):
        publish_items_to_es(api, source, "items", progress=False)
    assert api.indexes == {} and "aliases" not in api.calls


def test_a_concrete_index_named_like_the_alias_is_refused(tmp_path: Path) -> None:
    source = load_item_source(write_tiny_artifacts(tmp_path).paths)
    api = FakeEsApi()
    api.indexes["items"] = {}
    with pytest.raises(PublishVerificationError, match="concrete index is named 'items'"):
        publish_items_to_es(api, source, "items", progress=False)
    assert api.calls == []


# --- the online adapter reads what the publish wrote -----------------------------------------------------
class MetaOnlyEsApi:
    """The project's ``EsApi`` for one index whose mapping carries ``meta`` (no searches are made)."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def search(self, index: str, body: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        raise AssertionError("no search expected")

    def mget(self, index: str, body: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        raise AssertionError("no mget expected")

    def alias_target(self, alias: str, timeout_s: float) -> str | None:
        return f"{alias}-20260101t000000000000z-abcd"

    def index_meta(self, index: str, timeout_s: float) -> dict[str, Any]:
        return self.meta


def test_the_es_adapter_takes_version_and_chain_parameters_from_the_index(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path, "profile": "compose"}, environ={})
    chain = {"max_triggers": 7, "like_weight": 0.25, "prior_weight": 0.02}
    provider = EsItemIndex(settings, api=MetaOnlyEsApi(E.index_meta("20260101T000000000000Z-abcd", chain)))
    snapshot = provider._snapshot_of("recsys_items-20260101t000000000000z-abcd")
    assert snapshot.version == "20260101T000000000000Z-abcd"
    assert snapshot.params.triggers.max_triggers == 7 and snapshot.params.policy.like_weight == 0.25
    assert snapshot.params.policy.prior_weight == 0.02
    unversioned = EsItemIndex(settings, api=MetaOnlyEsApi({}))  # an index published without _meta
    with pytest.raises(ArtifactError, match="the _meta of index recsys_items-old"):
        unversioned._snapshot_of("recsys_items-old")


# --- exclusions are never cut -------------------------------------------------------------------------------
class BodyInterpretingEsApi:
    """The online ``EsApi`` answered from an in-process ``ItemIndex`` by reading what each body asks for:
    the exclusions it carries, not the ones the caller meant (so a cut list shows)."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index

    def search(self, index: str, body: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        knn = body.get("knn")
        query = knn.get("filter", {}) if knn else body["query"]
        clauses = query.get("bool", {}).get("must_not", [])
        excluded = np.array([int(i) for c in clauses for i in c["ids"]["values"]], np.int64)
        if knn:
            items, scores = self.index.search_vector(np.array(knn["query_vector"], np.float32), knn["k"], excluded)
            pairs = zip(items, scores, strict=True)
            return [{"_source": {"itemid": int(i)}, "_score": float(s) + 1.0} for i, s in pairs]
        should = body["query"]["bool"].get("should")
        if should:
            terms = [c["constant_score"]["filter"]["term"]["terms"] for c in should]
            items, scores = self.index.search_terms(terms, body["size"], excluded)
        else:
            items, scores = self.index.search_popular(body["size"], excluded)
        return [{"_source": {"itemid": int(i), "popularity": float(s)}} for i, s in zip(items, scores, strict=True)]

    def mget(self, index: str, request: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        raise AssertionError("not used here")

    def alias_target(self, alias: str, timeout_s: float) -> str | None:
        return None

    def index_meta(self, index: str, timeout_s: float) -> dict[str, Any]:
        return {}


def test_a_user_with_20000_seen_items_gets_the_embedded_answers(tmp_path: Path) -> None:
    n_items, n_seen, dim = 20_100, 20_000, 4
    rng = np.random.default_rng(3)
    ids = np.arange(1, n_items + 1, dtype=np.int64) * 2
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    vectors[:, 0] += np.linspace(0, 3, n_items, dtype=np.float32)  # later (higher) ids score higher
    local = ItemIndex(
        item_ids=ids,
        popularity=np.linspace(1, 100, n_items).astype(np.float32),  # the most popular items have the highest ids
        term_names=["Drama"],
        term_flags=np.ones((n_items, 1), dtype=bool),
        vector_ids=ids,
        vectors=vectors,
        neighbor_items=np.full((n_items, 1), -1, np.int64),
        neighbor_weights=np.zeros((n_items, 1), np.float32),
    )
    seen = ids[:n_seen]  # sorted by id, like the published seen lists
    es = EsIndex(BodyInterpretingEsApi(local), "items-v1", 1.0)
    query = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    for got, want in [
        (es.search_popular(50, seen), local.search_popular(50, seen)),
        (es.search_terms(["Drama"], 50, seen), local.search_terms(["Drama"], 50, seen)),
        (es.search_vector(query, 50, seen), local.search_vector(query, 50, seen)),
    ]:
        assert got[0].tolist() == want[0].tolist() and len(got[0]) == 50
        assert not np.isin(got[0], seen).any()
    assert len(E.popularity_query(50, seen.tolist())["query"]["bool"]["must_not"][0]["ids"]["values"]) == n_seen
