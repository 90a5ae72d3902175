"""Stage 0: get a MovieLens dataset and write it as normalized Parquet tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from data_exchange_center.events import read_event_log
from offline.common.stage import DataError, run_stage, stage_parser
from offline.preprocess.fetch import DATASET_NAMES, fetch_dataset
from offline.preprocess.synthetic import SyntheticConfig


def load_events(source: str | None) -> pd.DataFrame | None:
    if source is None:
        return None
    try:
        return read_event_log(source)
    except (OSError, ValueError) as exc:
        raise DataError(f"--events {source}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticConfig()
    parser = stage_parser(__doc__ or "")
    parser.add_argument("--dataset", default="ml-1m", choices=DATASET_NAMES, help="dataset name (default ml-1m)")
    parser.add_argument(
        "--raw-dir", type=Path, default=None, help="read a local copy instead of downloading ($RECSYS_RAW_DIR)"
    )
    parser.add_argument(
        "--fallback-synthetic",
        action="store_true",
        help="if the download fails (no network), generate the synthetic dataset instead, and say so",
    )
    parser.add_argument("--n-users", type=int, default=defaults.n_users, help="synthetic: number of users")
    parser.add_argument("--n-items", type=int, default=defaults.n_items, help="synthetic: number of items")
    parser.add_argument("--n-ratings", type=int, default=defaults.n_ratings, help="synthetic: number of ratings")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="synthetic: random seed")
    parser.add_argument(
        "--events",
        default=None,
        help="add the live event log as ratings: its SQLite file, a Parquet/CSV export, or redis://host:port/db#ns",
    )
    args = parser.parse_args(argv)
    synthetic = SyntheticConfig(n_users=args.n_users, n_items=args.n_items, n_ratings=args.n_ratings, seed=args.seed)
    return run_stage(
        "s0_fetch_data",
        args,
        lambda paths: fetch_dataset(
            args.dataset, paths, args.raw_dir, synthetic, args.fallback_synthetic, events=load_events(args.events)
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
