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

from offline_to_online.common import run_stage, stage_parser
from offline_to_online.recall.es_items import MIN_KNN_AGREEMENT
from offline_to_online.recall.stages import item_to_es


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
