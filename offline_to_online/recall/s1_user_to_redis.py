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

from offline_to_online.common import run_stage, stage_parser
from offline_to_online.recall.redis_users import (
    BATCH_SIZE,
)
from offline_to_online.recall.stages import user_to_redis


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
