"""Stage 2: point-in-time genre counts, item genre terms and the online user profiles.

Reads preprocess/samples.parquet and dataset/items.parquet; writes preprocess/pit_features.parquet
(row-aligned with samples), preprocess/item_terms.parquet and preprocess/user_profiles.parquet.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pandas as pd
from tqdm import tqdm

from data_exchange_center import schema as S
from data_exchange_center.artifacts import parquet_chunks, read_parquet, write_metadata, write_parquet
from data_exchange_center.paths import ArtifactPaths
from offline.common.dataset import dataset_name
from offline.common.spark import DEFAULT_ENGINE, add_engine_argument, spark_session
from offline.common.stage import run_stage, stage_parser
from offline.common.user_states import BLOCK_ROWS, user_blocks
from offline.preprocess.pit_features import (
    item_genre_flags,
    item_terms,
    list_genres,
    online_user_profiles,
    training_pit_features,
)
from offline.preprocess.pit_features_spark import term_trans_spark

log = logging.getLogger(__name__)


def term_trans(paths: ArtifactPaths, engine: str = DEFAULT_ENGINE) -> None:
    if engine == "spark":
        with spark_session("s2_term_trans") as spark:
            outputs = term_trans_spark(spark, paths)
    else:
        outputs = term_trans_pandas(paths)
    write_metadata(
        paths.preprocess_dir,
        "s2_term_trans",
        outputs,
        dataset=dataset_name(paths),
        config={"pit_window": S.PIT_WINDOW, "term_min_clicks": S.TERM_MIN_CLICKS, "engine": engine},
    )
    log.info("wrote %s, %s, %s", paths.pit_features_path, paths.item_terms_path, paths.user_profiles_path)


def term_trans_pandas(paths: ArtifactPaths, block_rows: int = BLOCK_ROWS) -> dict[str, Any]:
    """The pandas engine, one block of whole users at a time (``user_blocks``): every feature is a function
    of one user's timeline, so the blocks' rows are those of the whole table, in bounded memory."""
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    items = read_parquet(paths.items_path, S.ITEMS_COLUMNS)
    genres = list_genres(items)
    flags = item_genre_flags(items, genres)
    blocks = user_blocks(samples[S.USER_ID].to_numpy(), block_rows)
    profiles = []
    with parquet_chunks(paths.pit_features_path) as write_pit:
        for block in tqdm(blocks, desc="point-in-time features", unit="block", disable=len(blocks) == 1):
            part = samples.iloc[block].reset_index(drop=True)
            write_pit(training_pit_features(part, flags, genres))
            profiles.append(online_user_profiles(part, flags, genres))
    write_parquet(item_terms(items), paths.item_terms_path)
    write_parquet(pd.concat(profiles, ignore_index=True), paths.user_profiles_path)
    n_profiles = sum(len(p) for p in profiles)
    return {"genres": genres, "n_pit_rows": len(samples), "n_profiles": n_profiles, "n_items": len(items)}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_engine_argument(parser)
    args = parser.parse_args(argv)
    return run_stage("s2_term_trans", args, lambda paths: term_trans(paths, args.engine))


if __name__ == "__main__":
    sys.exit(main())
