"""The Elasticsearch client from settings (credentials, TLS) and ``EsApi`` over it.

Credentials come only from settings (environment or YAML): an API key when one is set, otherwise the
user and password; certificate verification stays on unless ``es_verify_certs`` is false, and
``es_ca_certs`` names the CA bundle of a private CA (the compose cluster's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import elastic_transport
from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch, NotFoundError, helpers
from tqdm import tqdm

from data_exchange_center import es_layout
from data_exchange_center.settings import Settings
from offline_to_online.common import BackendUnavailable, PublishVerificationError, redact_url, retry_startup

REQUEST_TIMEOUT_S = 60.0
# A force-merge to one segment rewrites the whole HNSW graph: minutes on a large catalogue or a busy
# node. It gets its own timeout (and no client retry, which would start a second merge) so that a slow
# merge neither aborts the publish at the 60 s of the other requests nor leaves an orphan index.
FORCEMERGE_TIMEOUT_S = 1800.0
BULK_CHUNK = 500
ES_HINT = (
    "check that Elasticsearch runs there (make up SERVICES=elasticsearch), RECSYS_ES_URL, and for TLS "
    "RECSYS_ES_CA_CERTS / RECSYS_ES_VERIFY_CERTS"
)
AUTH_HINT = "check RECSYS_ES_USERNAME and RECSYS_ES_PASSWORD, or RECSYS_ES_API_KEY"


def es_client_options(settings: Settings, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments of ``Elasticsearch(...)`` for publishing: a long timeout and two retries."""
    return es_layout.es_client_options(settings, request_timeout=timeout_s, max_retries=2)


def connect_es(settings: Settings, attempts: int = 5) -> Elasticsearch:
    """A client whose cluster answered, after a bounded retry; bad credentials fail at once."""
    client = Elasticsearch(**es_client_options(settings))
    address = redact_url(settings.es_url)

    def ping() -> Elasticsearch:
        try:
            client.info()
        except (AuthenticationException, AuthorizationException) as exc:
            raise BackendUnavailable("Elasticsearch", address, f"HTTP {exc.status_code}", AUTH_HINT) from None
        return client

    return retry_startup(
        ping,
        backend="Elasticsearch",
        address=address,
        hint=ES_HINT,
        errors=(elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout),
        attempts=attempts,
    )


class ElasticsearchApi:
    """``EsApi`` on a real client: one request per method, the bodies passed through unchanged."""

    def __init__(self, client: Elasticsearch, forcemerge_timeout_s: float = FORCEMERGE_TIMEOUT_S) -> None:
        self.client = client
        self.forcemerge_timeout_s = forcemerge_timeout_s

    def index_exists(self, name: str) -> bool:
        return bool(self.client.indices.exists(index=name))

    def alias_holders(self, alias: str) -> list[str]:
        try:
            return sorted(self.client.indices.get_alias(name=alias).body)
        except NotFoundError:
            return []

    def list_indexes(self, pattern: str) -> list[str]:
        return sorted(self.client.indices.get(index=pattern, expand_wildcards="open,closed").body)

    def create_index(self, name: str, settings: dict[str, Any], mappings: dict[str, Any]) -> None:
        self.client.indices.create(index=name, settings=settings, mappings=mappings)

    def bulk(self, actions: Iterator[dict[str, Any]], n_actions: int, progress: bool) -> int:
        n_ok = 0
        with tqdm(total=n_actions, desc="es items", unit="item", disable=not progress) as bar:
            try:
                for ok, _ in helpers.streaming_bulk(self.client, actions, chunk_size=BULK_CHUNK, max_retries=3):
                    n_ok += int(ok)
                    bar.update(1)
            except helpers.BulkIndexError as exc:
                raise PublishVerificationError(f"bulk load failed: {exc.errors[:1]}") from None
        return n_ok

    def put_settings(self, name: str, settings: dict[str, Any]) -> None:
        self.client.indices.put_settings(index=name, settings=settings)

    def refresh_and_merge(self, name: str) -> None:
        self.client.indices.refresh(index=name)
        merging = self.client.options(request_timeout=self.forcemerge_timeout_s, max_retries=0)
        merging.indices.forcemerge(index=name, max_num_segments=1, wait_for_completion=True)
        self.client.indices.refresh(index=name)

    def count(self, name: str, body: dict[str, Any] | None) -> int:
        response = self.client.count(index=name, body=body) if body else self.client.count(index=name)
        return int(response["count"])

    def search(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.client.search(index=name, body=body)["hits"]["hits"])

    def update_aliases(self, body: dict[str, Any]) -> None:
        self.client.indices.update_aliases(body=body)

    def delete_index(self, name: str) -> None:
        self.client.indices.delete(index=name, ignore_unavailable=True)

    def mapping_meta(self, name: str) -> dict[str, Any]:
        """The ``_meta`` of an index's mapping ({} when it has none)."""
        reply = self.client.indices.get_mapping(index=name).body
        return dict(reply.get(name, {}).get("mappings", {}).get("_meta") or {})
