"""Publish the item index to Elasticsearch 8: a new index per version, verified, then one alias switch.

1. refuse a concrete index that carries the alias' name; note which indexes hold the alias now;
2. create ``{alias}-{version}`` with the explicit mapping (refresh off), bulk-load every item;
3. turn refresh on, refresh, force-merge to one segment (an exact-as-possible HNSW graph; the merge
   has its own, longer timeout: ``es_client.FORCEMERGE_TIMEOUT_S``);
4. verify the new index: document count, the hit count of a term query per term, and the kNN
   neighbour of sampled items' own vectors against the exact maximum-inner-product neighbour;
5. move the alias in one ``_aliases`` call (remove from the old, add to the new);
6. delete every other ``{alias}-*`` index except the ones the alias left (the previous version:
   a service that resolved the alias a moment ago still reads it, and a rollback switches back to
   it); those go at the next publish, and so does whatever an interrupted run left.

Any failure after the new index was created (the bulk load, the refresh or force-merge, a timeout, a
failed verification) deletes the new index and leaves the alias where it was. Every request body
comes from a pure function (``data_exchange_center.es_layout`` and ``item_documents`` below); the
calls go through ``EsApi``, this stage's own small interface over the client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from data_exchange_center import es_layout as E
from data_exchange_center.online_layout import new_version
from offline_to_online.common import PublishVerificationError
from offline_to_online.recall.item_source import ItemSource
from offline_to_online.recall.redis_users import sample_positions

log = logging.getLogger(__name__)

N_KNN_SAMPLE = 50
MIN_KNN_AGREEMENT = 0.95  # HNSW is approximate: at least this share of samples must find the exact best
BULK_CHUNK = 500


class EsApi(Protocol):
    """The Elasticsearch requests this stage sends (one method per request)."""

    def index_exists(self, name: str) -> bool: ...
    def alias_holders(self, alias: str) -> list[str]: ...
    def list_indexes(self, pattern: str) -> list[str]: ...
    def create_index(self, name: str, settings: dict[str, Any], mappings: dict[str, Any]) -> None: ...
    def bulk(self, actions: Iterator[dict[str, Any]], n_actions: int, progress: bool) -> int: ...
    def put_settings(self, name: str, settings: dict[str, Any]) -> None: ...
    def refresh_and_merge(self, name: str) -> None: ...
    def count(self, name: str, body: dict[str, Any] | None) -> int: ...
    def search(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]: ...
    def update_aliases(self, body: dict[str, Any]) -> None: ...
    def delete_index(self, name: str) -> None: ...
    def mapping_meta(self, name: str) -> dict[str, Any]: ...


@dataclass
class EsPublishReport:
    version: str
    index: str
    alias: str
    previous_indexes: list[str]
    n_items: int
    term_counts: dict[str, int]
    knn_agreement: float
    deleted: list[str] = field(default_factory=list)


def item_documents(source: ItemSource) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(_id, _source)`` per item, in catalogue order; an item without a vector has no ``vector`` field."""
    for pos in range(source.n_items):
        itemid = int(source.itemids[pos])
        doc: dict[str, Any] = {
            E.FIELD_ITEMID: itemid,
            E.FIELD_TERMS: source.terms[pos],
            E.FIELD_POPULARITY: float(source.popularity[pos]),
            E.FIELD_NEIGHBORS: source.neighbors[pos].tolist(),
            E.FIELD_NEIGHBOR_WEIGHTS: [float(w) for w in source.neighbor_weights[pos]],
        }
        row = int(source.vector_rows[pos])
        if row >= 0:
            doc[E.FIELD_VECTOR] = [float(x) for x in source.vectors[row]]
        yield str(itemid), doc


def bulk_actions(source: ItemSource, index: str) -> Iterator[dict[str, Any]]:
    """Bulk helper actions: one ``index`` operation per item into ``index``."""
    for doc_id, doc in item_documents(source):
        yield {"_op_type": "index", "_index": index, "_id": doc_id, "_source": doc}


def publish_items_to_es(
    api: EsApi,
    source: ItemSource,
    alias: str,
    *,
    version: str | None = None,
    chain: dict[str, int | float] | None = None,
    n_knn_sample: int = N_KNN_SAMPLE,
    min_knn_agreement: float = MIN_KNN_AGREEMENT,
    progress: bool = True,
) -> EsPublishReport:
    """Build, verify and switch to a new index for ``source`` (see the module docstring)."""
    version = version or new_version()
    index = E.index_name(alias, version)
    if api.index_exists(alias) and not api.alias_holders(alias):
        raise PublishVerificationError(
            f"a concrete index is named {alias!r}, so it cannot be an alias: delete it or set RECSYS_ES_INDEX_ALIAS"
        )
    previous = api.alias_holders(alias)
    api.create_index(index, E.index_settings(), E.index_mapping(source.vector_dim, E.index_meta(version, chain or {})))
    try:
        build_index(api, source, index, progress)
        term_counts = verify_index(api, source, index)
        agreement = verify_knn(api, source, index, n_knn_sample, min_knn_agreement)
    except BaseException:  # also a timeout, a lost connection or Ctrl-C: no orphan index stays behind
        delete_quietly(api, index)
        raise
    api.update_aliases(E.alias_switch_actions(alias, index, previous))
    deleted = [name for name in api.list_indexes(E.index_pattern(alias)) if name not in (index, *previous)]
    for name in deleted:
        api.delete_index(name)
    log.info("Elasticsearch: alias %s -> %s (was %s), %d items", alias, index, previous, source.n_items)
    return EsPublishReport(version, index, alias, previous, source.n_items, term_counts, agreement, deleted)


def build_index(api: EsApi, source: ItemSource, index: str, progress: bool) -> None:
    """Load every item into the (created, empty) ``index``, turn refresh on, refresh and force-merge."""
    n_indexed = api.bulk(bulk_actions(source, index), source.n_items, progress)
    if n_indexed != source.n_items:
        raise PublishVerificationError(f"bulk load into {index} indexed {n_indexed} of {source.n_items} items")
    api.put_settings(index, E.refresh_settings())
    api.refresh_and_merge(index)


def delete_quietly(api: EsApi, index: str) -> None:
    """Delete the index of a failed publish; a failure to do so is logged (the next publish removes it)."""
    try:
        api.delete_index(index)
    except Exception as exc:
        log.warning("could not delete %s after the failed publish (%s); the next publish removes it", index, exc)


def verify_index(api: EsApi, source: ItemSource, index: str) -> dict[str, int]:
    """The index holds every item, and each term query counts what the artifacts count."""
    n_docs = api.count(index, None)
    if n_docs != source.n_items:
        raise PublishVerificationError(f"{index} holds {n_docs} documents, the artifacts {source.n_items} items")
    expected = source.term_counts()
    for term, n_expected in expected.items():
        n_hits = api.count(index, E.term_count_query(term))
        if n_hits != n_expected:
            raise PublishVerificationError(f"{index}: term {term!r} matches {n_hits} items, artifacts {n_expected}")
    return expected


def verify_knn(api: EsApi, source: ItemSource, index: str, n_sample: int, min_agreement: float) -> float:
    """Share of sampled items whose kNN top hit for their own vector is the exact best item."""
    sample = sample_positions(len(source.vector_ids), n_sample)
    if not len(sample):
        return 1.0
    n_agree = 0
    for row in sample:
        vector = source.vectors[int(row)]
        hits = api.search(index, E.knn_query(vector.tolist(), k=1))
        top = int(hits[0]["_source"][E.FIELD_ITEMID]) if hits else None
        n_agree += top in source.best_inner_product_items(vector)
    agreement = n_agree / len(sample)
    if agreement < min_agreement:
        raise PublishVerificationError(
            f"{index}: kNN found the exact best item for {n_agree} of {len(sample)} sampled items' own vectors "
            f"(need {min_agreement:.0%}): check the vector mapping (similarity {E.SIMILARITY})"
        )
    return agreement


def exact_self_share(source: ItemSource, n_sample: int = N_KNN_SAMPLE) -> float:
    """Share of sampled items that are their own best inner-product neighbour (reported, not required)."""
    sample = sample_positions(len(source.vector_ids), n_sample)
    hits = [int(source.vector_ids[r]) in source.best_inner_product_items(source.vectors[int(r)]) for r in sample]
    return float(np.mean(hits)) if hits else 1.0
