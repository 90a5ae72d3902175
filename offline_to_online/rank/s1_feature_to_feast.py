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

import redis

from data_exchange_center.online_layout import FEAST_PROJECT
from data_exchange_center.settings import Settings
from offline_to_online.common import BackendUnavailable, redact_url, run_stage, served_by, stage_parser
from offline_to_online.rank.feast_publish import FeastPublishReport, prepare_sources, publish_features
from offline_to_online.recall.redis_users import REDIS_HINT, connect_redis

FEATURE_SERVER_REDIS_URL = "redis://redis:6379/0"  # the compose service name, as the feast container sees it


def feature_to_feast(
    settings: Settings,
    server_redis_url: str | None = None,
    project: str = FEAST_PROJECT,
    connect_attempts: int = 5,
) -> FeastPublishReport:
    """Check the rank artifacts against the spec, then generate, apply, materialize and verify."""
    prepared = prepare_sources(settings.paths)  # checked before anything is written
    if not served_by(settings, "features", "feast-", "s1_feature_to_feast", "publishing to Feast's SQLite store"):
        return publish_features(settings.paths, prepared, yaml_redis_url=None, store_redis_url=None, project=project)
    connect_redis(settings.redis_url, attempts=connect_attempts).close()
    try:
        return publish_features(
            settings.paths,
            prepared,
            yaml_redis_url=server_redis_url or FEATURE_SERVER_REDIS_URL,
            store_redis_url=settings.redis_url,
            project=project,
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BackendUnavailable(
            "Redis (Feast online store)", redact_url(settings.redis_url), exc, f"materialization stopped; {REDIS_HINT}"
        ) from None


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
