"""Ranking stage 1: publish the user and item ranking features through Feast.

Reads rank/feature_spec.json, rank/user_features.parquet and rank/item_features.parquet; generates the
Feast repository under feature_repo/ (feature_store.yaml, features.py, data/), then applies it and
materializes it with Feast's Python API and reads sampled entities back.
--profile embedded: SQLite online store inside the repository (data/online_store.db).
--profile compose: Redis online store; this process writes through RECSYS_REDIS_URL, and the yaml
names --server-redis-url, the address at which the Feast feature server reaches the same Redis.
The features role's backend decides (RECSYS_FEATURES_BACKEND=local|feast-redis|feast-server, else the
profile's preset): with local, the Redis online store is skipped with a log line (SQLite instead).
"""

from __future__ import annotations

import sys

from data_exchange_center.online_layout import FEAST_PROJECT
from offline_to_online.common import run_stage, stage_parser
from offline_to_online.rank.stages import FEATURE_SERVER_REDIS_URL, feature_to_feast


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    parser.add_argument("--redis-url", default=None, help="Redis this process writes to (default: RECSYS_REDIS_URL)")
    parser.add_argument(
        "--server-redis-url",
        default=None,
        help=f"Redis URL written to feature_store.yaml for the feature server (default {FEATURE_SERVER_REDIS_URL})",
    )
    parser.add_argument("--project", default=FEAST_PROJECT, help="Feast project name (default %(default)s)")
    args = parser.parse_args(argv)
    return run_stage(
        "s1_feature_to_feast",
        args,
        lambda s: feature_to_feast(s, args.server_redis_url, args.project, args.connect_attempts),
        redis_url=args.redis_url,
    )


if __name__ == "__main__":
    sys.exit(main())
