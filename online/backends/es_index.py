"""The compose profile's item index: Elasticsearch 8 (inverted index + kNN) behind one alias.

``EsIndex`` answers the chain's four questions (``chain.ItemIndexLike``) with the request bodies of
``data_exchange_center.es_layout``, against the concrete index that the alias named when the snapshot
was taken, so one request never mixes two item versions. The chain parameters of a version come
from its index mapping's ``_meta`` (written with the index), never from offline files. The alias is
re-read at most every few seconds; a move is a hot switch. When Elasticsearch fails the chain uses the
in-process index of the same published version (``online.backends.local_index``). ``EsApi`` is the
small interface the adapter needs of a cluster; ``ElasticsearchApi`` implements it on the official
client (credentials and TLS from settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from data_exchange_center import es_layout as E
from data_exchange_center.chain import ItemIndexLike
from data_exchange_center.es_layout import es_client_options
from data_exchange_center.item_index import Ranked
from data_exchange_center.online_layout import check_chain_parameters
from data_exchange_center.settings import Settings
from online.backends.base import IndexSnapshot, ReadyStatus
from online.backends.local_index import chain_params
from online.backends.versions import Refreshing


class EsApi(Protocol):
    def search(self, index: str, body: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]: ...

    def mget(self, index: str, request: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        """``request``: keyword arguments of ``Elasticsearch.mget`` (``es_layout.neighbors_mget``)."""
        ...

    def alias_target(self, alias: str, timeout_s: float) -> str | None: ...

    def index_meta(self, index: str, timeout_s: float) -> dict[str, Any]:
        """The ``_meta`` of the index's mapping ({} when it has none)."""
        ...


class ElasticsearchApi:
    """``EsApi`` on ``elasticsearch.Elasticsearch`` (thread-safe, one per worker)."""

    def __init__(self, settings: Settings) -> None:
        from elasticsearch import Elasticsearch

        options = es_client_options(settings, max_retries=0, retry_on_timeout=False)  # budgets per call
        self.client = Elasticsearch(**options)

    def search(self, index: str, body: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        reply = self.client.options(request_timeout=timeout_s).search(index=index, body=body)
        return list(reply["hits"]["hits"])

    def mget(self, index: str, request: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        return list(self.client.options(request_timeout=timeout_s).mget(index=index, **request)["docs"])

    def index_meta(self, index: str, timeout_s: float) -> dict[str, Any]:
        reply = self.client.options(request_timeout=timeout_s).indices.get_mapping(index=index).body
        return dict(reply.get(index, {}).get("mappings", {}).get("_meta") or {})

    def alias_target(self, alias: str, timeout_s: float) -> str | None:
        from elasticsearch import NotFoundError

        try:
            holders = sorted(self.client.options(request_timeout=timeout_s).indices.get_alias(name=alias).body)
        except NotFoundError:
            return None
        return holders[-1] if holders else None


def _items_and(hits: list[dict[str, Any]], field: str | None) -> Ranked:
    items = np.array([int(h["_source"][E.FIELD_ITEMID]) for h in hits], dtype=np.int64)
    if field is None:
        scores = [E.inner_product_from_score(float(h["_score"])) for h in hits]
    else:
        scores = [float(h["_source"][field]) for h in hits]
    return items, np.array(scores, dtype=np.float32)


@dataclass(frozen=True)
class EsIndex:
    """``chain.ItemIndexLike`` over one concrete Elasticsearch index."""

    api: EsApi
    index: str
    timeout_s: float

    def bound(self, timeout_s: float) -> EsIndex:
        return EsIndex(self.api, self.index, timeout_s)

    def search_popular(self, k: int, exclude: np.ndarray | None = None) -> Ranked:
        body = E.popularity_query(k, _ids(exclude))
        return _items_and(self.api.search(self.index, body, self.timeout_s), E.FIELD_POPULARITY)

    def search_terms(self, terms: list[str], k: int, exclude: np.ndarray | None = None) -> Ranked:
        body = E.term_recall_query(terms, k, _ids(exclude))
        return _items_and(self.api.search(self.index, body, self.timeout_s), E.FIELD_POPULARITY)

    def search_vector(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None) -> Ranked:
        body = E.knn_query(np.asarray(query, np.float32).tolist(), k, exclude_ids=_ids(exclude))
        return _items_and(self.api.search(self.index, body, self.timeout_s), None)

    def neighbors_of(self, items: np.ndarray) -> Ranked:
        """(len(items), width) neighbour ids and weights, -1/0 padded; unknown items are all padding."""
        docs = self.api.mget(self.index, E.neighbors_mget([int(i) for i in items]), self.timeout_s)
        lists = [(d["_source"].get(E.FIELD_NEIGHBORS) or [], d["_source"].get(E.FIELD_NEIGHBOR_WEIGHTS) or [])
                 if d.get("found") else ([], []) for d in docs]  # fmt: skip
        width = max((len(n) for n, _ in lists), default=0) or 1
        nbr = np.full((len(items), width), -1, dtype=np.int64)
        weights = np.zeros((len(items), width), dtype=np.float32)
        for row, (neighbors, neighbor_weights) in enumerate(lists):
            nbr[row, : len(neighbors)] = neighbors
            weights[row, : len(neighbor_weights)] = neighbor_weights
        return nbr, weights


def _ids(exclude: np.ndarray | None) -> list[int]:
    return [] if exclude is None else [int(i) for i in exclude]


class EsItemIndex:
    """``ItemIndexProvider`` over Elasticsearch: the alias's current index, re-read every few seconds."""

    name = "elasticsearch"

    def __init__(self, settings: Settings, api: EsApi | None = None) -> None:
        self.api = api or ElasticsearchApi(settings)
        self.server = settings.es_url  # the server this role calls (roles on one server fail together)
        self.alias = settings.es_index_alias
        self.timeout_s = settings.backend_timeout_ms / 1000
        self.quotas = settings.chain_quotas
        self.snapshot: Refreshing[IndexSnapshot] = Refreshing("item_index", self._probe, self._snapshot_of)

    def _probe(self) -> str | None:
        return self.api.alias_target(self.alias, max(self.timeout_s, 1.0))

    def _snapshot_of(self, index: str) -> IndexSnapshot:
        """The snapshot of one concrete index: its version and chain parameters from the mapping's ``_meta``."""
        meta = self.api.index_meta(index, max(self.timeout_s, 1.0))
        chain = check_chain_parameters(meta.get(E.META_CHAIN), f"the _meta of index {index}")
        version = str(meta.get(E.META_VERSION) or index.removeprefix(f"{self.alias}-".lower()))
        return IndexSnapshot(EsIndex(self.api, index, self.timeout_s), chain_params(chain, self.quotas), version)

    def current(self) -> IndexSnapshot:
        return self.snapshot.get()

    def bind(self, snapshot: IndexSnapshot, timeout_s: float) -> ItemIndexLike:
        index = snapshot.index
        return index.bound(timeout_s) if isinstance(index, EsIndex) else index

    def maybe_refresh(self) -> None:
        self.snapshot.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.snapshot]

    def status(self) -> ReadyStatus:
        try:
            target = self._probe()
        except Exception as exc:
            return ReadyStatus(False, self.name, self.snapshot.version, f"{type(exc).__name__}: {str(exc)[:200]}")
        if target is None:
            return ReadyStatus(False, self.name, None, f"alias {self.alias} points at no index")
        return ReadyStatus(self.snapshot.loaded, self.name, self.current().version if self.snapshot.loaded else None)

    def close(self) -> None:
        pass
