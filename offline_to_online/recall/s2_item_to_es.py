"""Recall stage 2: publish the item index (terms, vectors, popularity, neighbours), versioned and atomic.

Reads preprocess/item_terms.parquet, recall/item_vectors.npz, recall/popularity.parquet and
recall/item_neighbors.parquet.
--profile compose: Elasticsearch at RECSYS_ES_URL, a new index per version behind the alias
RECSYS_ES_INDEX_ALIAS (credentials and TLS from RECSYS_ES_* settings).
--profile embedded: the artifacts themselves, pinned by online/items/<version>/manifest.json and CURRENT.
The mapping and alias scheme are specified in data_exchange_center/ONLINE_STORE_FORMAT.md.
"""

from __future__ import annotations

import sys

import elastic_transport

from data_exchange_center.settings import Settings
from offline_to_online.common import BackendUnavailable, redact_url, run_stage, stage_parser
from offline_to_online.recall.embedded_items import EmbeddedItemsReport, publish_items_embedded
from offline_to_online.recall.es_client import ES_HINT, ElasticsearchApi, connect_es
from offline_to_online.recall.es_items import MIN_KNN_AGREEMENT, EsPublishReport, publish_items_to_es
from offline_to_online.recall.item_source import load_item_source


def item_to_es(
    settings: Settings, progress: bool = True, connect_attempts: int = 5, min_knn_agreement: float = MIN_KNN_AGREEMENT
) -> EsPublishReport | EmbeddedItemsReport:
    """Check the item artifacts, then publish them to the profile's item index."""
    source = load_item_source(settings.paths)  # checked before anything is written
    if settings.profile == "embedded":
        return publish_items_embedded(settings.paths, source)
    api = ElasticsearchApi(connect_es(settings, attempts=connect_attempts))
    try:
        return publish_items_to_es(
            api, source, settings.es_index_alias, progress=progress, min_knn_agreement=min_knn_agreement
        )
    except (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout) as exc:
        raise BackendUnavailable(
            "Elasticsearch", redact_url(settings.es_url), exc, f"the publish stopped, the alias is unchanged; {ES_HINT}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    parser.add_argument("--es-url", default=None, help="Elasticsearch URL (default: RECSYS_ES_URL)")
    parser.add_argument("--alias", default=None, help="index alias (default: RECSYS_ES_INDEX_ALIAS)")
    parser.add_argument(
        "--min-knn-agreement",
        type=float,
        default=MIN_KNN_AGREEMENT,
        help="share of sampled items whose kNN top hit must be the exact best (default %(default)s)",
    )
    args = parser.parse_args(argv)
    return run_stage(
        "s2_item_to_es",
        args,
        lambda s: item_to_es(s, not args.quiet, args.connect_attempts, args.min_knn_agreement),
        es_url=args.es_url,
        es_index_alias=args.alias,
    )


if __name__ == "__main__":
    sys.exit(main())
