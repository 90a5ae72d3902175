"""Stage 2: point-in-time genre counts, item genre terms and the online user profiles.

Reads preprocess/samples.parquet and dataset/items.parquet; writes preprocess/pit_features.parquet
(row-aligned with samples), preprocess/item_terms.parquet and preprocess/user_profiles.parquet.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet, write_metadata, write_parquet
from data_exchange_center.paths import ArtifactPaths
from offline.common.dataset import dataset_name
from offline.common.spark import DEFAULT_ENGINE, add_engine_argument, spark_session
from offline.common.stage import run_stage, stage_parser
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


def term_trans_pandas(paths: ArtifactPaths) -> dict[str, Any]:
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    items = read_parquet(paths.items_path, S.ITEMS_COLUMNS)
    genres = list_genres(items)
    flags = item_genre_flags(items, genres)
    pit = training_pit_features(samples, flags, genres)
    profiles = online_user_profiles(samples, flags, genres)
    write_parquet(pit, paths.pit_features_path)
    write_parquet(item_terms(items), paths.item_terms_path)
    write_parquet(profiles, paths.user_profiles_path)
    return {"genres": genres, "n_pit_rows": len(pit), "n_profiles": len(profiles), "n_items": len(items)}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_engine_argument(parser)
    args = parser.parse_args(argv)
    return run_stage("s2_term_trans", args, lambda paths: term_trans(paths, args.engine))


if __name__ == "__main__":
    sys.exit(main())
