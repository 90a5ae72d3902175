"""Recall stage 1: publish per-user recall profiles (terms, vector, seen items), versioned and atomic.

Reads preprocess/user_profiles.parquet, recall/user_seen.parquet and recall/user_vectors.npz.
--profile compose: Redis at RECSYS_REDIS_URL, keys under RECSYS_REDIS_NAMESPACE (one hash per user).
--profile embedded: a version folder under online/users/ and its CURRENT pointer.
The profiles role's backend decides (RECSYS_PROFILES_BACKEND=local|redis, else the profile's preset):
with local, Redis is skipped with a log line and the in-process store is published.
The layout is specified in data_exchange_center/ONLINE_STORE_FORMAT.md.
"""

from __future__ import annotations

import sys

from data_exchange_center.online_layout import users_store_dir
from data_exchange_center.settings import Settings
from offline_to_online.common import run_stage, served_by, stage_parser
from offline_to_online.recall.embedded_users import EmbeddedPublishReport, publish_users_embedded
from offline_to_online.recall.redis_users import (
    BATCH_SIZE,
    RedisPublishReport,
    connect_redis,
    publish_users_to_redis,
)
from offline_to_online.recall.user_source import load_user_source


def user_to_redis(
    settings: Settings, batch_size: int = BATCH_SIZE, progress: bool = True, connect_attempts: int = 5
) -> RedisPublishReport | EmbeddedPublishReport:
    """Check the user artifacts, then publish them to the profile's store; returns what was published."""
    source = load_user_source(settings.paths)  # checked before anything is written
    if not served_by(settings, "profiles", "redis", "s1_user_to_redis", "publishing the in-process store"):
        return publish_users_embedded(users_store_dir(settings.paths), source)
    client = connect_redis(settings.redis_url, attempts=connect_attempts)
    return publish_users_to_redis(client, source, settings.redis_namespace, batch_size=batch_size, progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    parser.add_argument("--redis-url", default=None, help="Redis URL (default: RECSYS_REDIS_URL)")
    parser.add_argument("--namespace", default=None, help="key prefix (default: RECSYS_REDIS_NAMESPACE)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="users per pipelined round trip")
    args = parser.parse_args(argv)
    return run_stage(
        "s1_user_to_redis",
        args,
        lambda s: user_to_redis(s, args.batch_size, not args.quiet, args.connect_attempts),
        redis_url=args.redis_url,
        redis_namespace=args.namespace,
    )


if __name__ == "__main__":
    sys.exit(main())
