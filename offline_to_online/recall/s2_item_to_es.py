"""Recall stage 2: publish the item index (terms, vectors, popularity, neighbours), versioned and atomic.

Reads preprocess/item_terms.parquet, recall/item_vectors.npz, recall/popularity.parquet,
recall/item_neighbors.parquet, recall/i2i_params.json and rank/ranking_policy.json (the chain
parameters selected offline).
Both profiles write a self-contained version folder online/items/<version>/ (copies of the four item
files, chain.json, manifest.json with checksums) and switch online/items/CURRENT to it: the embedded
profile serves from it, the compose profile falls back to it.
--profile compose: also Elasticsearch at RECSYS_ES_URL, a new index of the same version behind the
alias RECSYS_ES_INDEX_ALIAS (credentials and TLS from RECSYS_ES_* settings), the chain parameters in
the index mapping's _meta; the folder goes live only after the alias has moved.
The index role's backend decides (RECSYS_INDEX_BACKEND=local|elasticsearch, else the profile's preset):
with local, Elasticsearch is skipped with a log line.
The mapping and alias scheme are specified in data_exchange_center/ONLINE_STORE_FORMAT.md.
"""

from __future__ import annotations

import sys

import elastic_transport

from data_exchange_center.online_layout import new_version
from data_exchange_center.settings import Settings
from offline_to_online.common import BackendUnavailable, redact_url, run_stage, served_by, stage_parser
from offline_to_online.recall.embedded_items import (
    EmbeddedItemsReport,
    activate_item_version,
    discard_item_version,
    publish_items_embedded,
    stage_item_version,
)
from offline_to_online.recall.es_client import ES_HINT, ElasticsearchApi, connect_es
from offline_to_online.recall.es_items import MIN_KNN_AGREEMENT, EsPublishReport, publish_items_to_es
from offline_to_online.recall.item_source import chain_parameters, load_item_source


def item_to_es(
    settings: Settings, progress: bool = True, connect_attempts: int = 5, min_knn_agreement: float = MIN_KNN_AGREEMENT
) -> EsPublishReport | EmbeddedItemsReport:
    """Check the item artifacts, then publish them to the profile's item index."""
    load_item_source(settings.paths)  # checked before anything is written
    chain = chain_parameters(settings.paths)
    if not served_by(settings, "index", "elasticsearch", "s2_item_to_es", "publishing the in-process version only"):
        return publish_items_embedded(settings.paths, chain)
    api = ElasticsearchApi(connect_es(settings, attempts=connect_attempts))
    version = new_version()
    _, source = stage_item_version(settings.paths, chain, version)  # the fallback's copy, not yet live
    try:
        report = publish_items_to_es(
            api, source, settings.es_index_alias, version=version, chain=chain, progress=progress,
            min_knn_agreement=min_knn_agreement,
        )  # fmt: skip
    except (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout) as exc:
        discard_item_version(settings.paths, version)
        raise BackendUnavailable(
            "Elasticsearch", redact_url(settings.es_url), exc, f"the publish stopped, the alias is unchanged; {ES_HINT}"
        ) from None
    except BaseException:
        discard_item_version(settings.paths, version)
        raise
    activate_item_version(settings.paths, version)
    return report


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
