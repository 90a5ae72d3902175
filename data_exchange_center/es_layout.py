"""The Elasticsearch item index: names, mapping and the request bodies both sides send.

The written specification is ``ONLINE_STORE_FORMAT.md``. One index per published version,
``{alias}-{version}`` in lower case, and one alias (``Settings.es_index_alias``) that points at the live
one; the alias moves in one ``_aliases`` call. Documents have ``_id`` = the item id in decimal.

Scores: with ``similarity: max_inner_product`` Elasticsearch returns ``ip + 1`` for an inner product
``ip >= 0`` and ``1 / (1 - ip)`` for ``ip < 0``; ``inner_product_from_score`` inverts that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from data_exchange_center.settings import Settings

FIELD_ITEMID = "itemid"
FIELD_TERMS = "terms"
FIELD_VECTOR = "vector"
FIELD_POPULARITY = "popularity"
FIELD_NEIGHBORS = "neighbors"
FIELD_NEIGHBOR_WEIGHTS = "neighbor_weights"
DOC_FIELDS = (FIELD_ITEMID, FIELD_TERMS, FIELD_VECTOR, FIELD_POPULARITY, FIELD_NEIGHBORS, FIELD_NEIGHBOR_WEIGHTS)

SIMILARITY = "max_inner_product"  # the vectors were trained with inner-product scores
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
NEIGHBOR_SOURCE = (FIELD_ITEMID, FIELD_NEIGHBORS, FIELD_NEIGHBOR_WEIGHTS)  # the fields an `_mget` returns


def index_name(alias: str, version: str) -> str:
    """``recsys_items`` + ``20261125T131950Z-3f9a`` -> ``recsys_items-20261125t131950z-3f9a``."""
    return f"{alias}-{version}".lower()


def index_pattern(alias: str) -> str:
    """Every index that a publisher of ``alias`` created."""
    return f"{alias}-*".lower()


def index_settings(n_shards: int = 1, n_replicas: int = 0) -> dict[str, Any]:
    """Settings of a new index; refresh is off while bulk loading and turned on by ``refresh_settings``."""
    return {"index": {"number_of_shards": n_shards, "number_of_replicas": n_replicas, "refresh_interval": "-1"}}


def refresh_settings() -> dict[str, Any]:
    return {"index": {"refresh_interval": "1s"}}


def index_mapping(vector_dims: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The explicit mapping; ``dynamic: strict`` refuses any field not listed here. ``meta`` goes to the
    mapping's ``_meta`` (the version id and the chain parameters the index is served with)."""
    if vector_dims < 1:
        raise ValueError(f"vector dims must be positive, got {vector_dims}")
    return {
        "_meta": dict(meta or {}),
        "dynamic": "strict",
        "properties": {
            FIELD_ITEMID: {"type": "long"},
            FIELD_TERMS: {"type": "keyword"},
            FIELD_VECTOR: {
                "type": "dense_vector",
                "dims": int(vector_dims),
                "index": True,
                "similarity": SIMILARITY,
                "index_options": {"type": "hnsw", "m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
            },
            FIELD_POPULARITY: {"type": "float"},
            FIELD_NEIGHBORS: {"type": "long", "index": False},
            FIELD_NEIGHBOR_WEIGHTS: {"type": "float", "index": False},
        },
    }


META_VERSION = "version"
META_CHAIN = "chain"


def index_meta(version: str, chain: dict[str, int | float]) -> dict[str, Any]:
    """The ``_meta`` of a published index: everything the service needs besides the documents."""
    return {META_VERSION: version, META_CHAIN: dict(chain)}


def alias_switch_actions(alias: str, new_index: str, old_indexes: Iterable[str]) -> dict[str, Any]:
    """The body of one ``POST /_aliases``: remove the alias from the old indexes and add it to the new one."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": old, "alias": alias}} for old in sorted(set(old_indexes)) if old != new_index
    ]
    actions.append({"add": {"index": new_index, "alias": alias, "is_write_index": True}})
    return {"actions": actions}


# --- queries the verification and the online side send ----------------------------------------------
def _exclude_clause(exclude_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every excluded id in one ``ids`` query (no cap: an ``ids`` query is one term-set query, not bounded by
    ``index.max_terms_count``; a cut list would hand seen items back)."""
    if not len(exclude_ids):
        return []
    return [{"ids": {"values": [str(int(i)) for i in exclude_ids]}}]


def term_count_query(term: str) -> dict[str, Any]:
    """Body of ``_count``: items carrying ``term``."""
    return {"query": {"term": {FIELD_TERMS: term}}}


def term_recall_query(terms: Sequence[str], size: int, exclude_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Items carrying any of ``terms``, by number of matching terms, then popularity, then item id."""
    should = [{"constant_score": {"filter": {"term": {FIELD_TERMS: t}}, "boost": 1.0}} for t in terms]
    return {
        "size": int(size),
        "query": {"bool": {"should": should, "minimum_should_match": 1, "must_not": _exclude_clause(exclude_ids)}},
        "sort": [{"_score": "desc"}, {FIELD_POPULARITY: "desc"}, {FIELD_ITEMID: "asc"}],
        "_source": [FIELD_ITEMID, FIELD_POPULARITY],
    }


def knn_query(
    vector: Sequence[float], k: int, num_candidates: int | None = None, exclude_ids: Sequence[int] = ()
) -> dict[str, Any]:
    """Approximate maximum-inner-product search for ``vector`` (a search body with top-level ``knn``)."""
    knn: dict[str, Any] = {
        "field": FIELD_VECTOR,
        "query_vector": [float(x) for x in vector],
        "k": int(k),
        "num_candidates": int(num_candidates or max(100, 2 * k)),
    }
    excluded = _exclude_clause(exclude_ids)
    if excluded:
        knn["filter"] = {"bool": {"must_not": excluded}}
    return {"knn": knn, "size": int(k), "_source": [FIELD_ITEMID]}


def neighbors_mget(itemids: Sequence[int]) -> dict[str, Any]:
    """The neighbour lists of trigger items: keyword arguments of ``Elasticsearch.mget`` (besides ``index``).

    ``ids`` goes into the request body (the server's multi-get body accepts only ``docs`` or ``ids`` at its
    top level); ``source`` is sent as the ``_source`` query parameter:
    ``GET /{index}/_mget?_source=itemid,neighbors,neighbor_weights`` with body ``{"ids": ["5", "8"]}``.
    """
    return {"ids": [str(int(i)) for i in itemids], "source": list(NEIGHBOR_SOURCE)}


def popularity_query(size: int, exclude_ids: Sequence[int] = ()) -> dict[str, Any]:
    return {
        "size": int(size),
        "query": {"bool": {"must": [{"match_all": {}}], "must_not": _exclude_clause(exclude_ids)}},
        "sort": [{FIELD_POPULARITY: "desc"}, {FIELD_ITEMID: "asc"}],
        "_source": [FIELD_ITEMID, FIELD_POPULARITY],
    }


def inner_product_from_score(score: float) -> float:
    """Invert the ``max_inner_product`` score transform."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


def es_client_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``Elasticsearch(...)`` for both sides: one host, authentication (API key, else
    user and password) and TLS from settings; ``overrides`` sets timeouts and retries."""
    options: dict[str, Any] = {"hosts": [settings.es_url], **overrides}
    if settings.es_api_key is not None:
        options["api_key"] = settings.es_api_key.get_secret_value()
    elif settings.es_password is not None:
        options["basic_auth"] = (settings.es_username, settings.es_password.get_secret_value())
    if settings.es_url.startswith("https://"):
        options["verify_certs"] = settings.es_verify_certs
        if settings.es_ca_certs is not None:
            options["ca_certs"] = str(settings.es_ca_certs)
    return options
