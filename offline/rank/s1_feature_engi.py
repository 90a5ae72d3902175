"""Ranking stage 1: the feature specification and the ranking feature tables.

Reads preprocess/samples.parquet, preprocess/pit_features.parquet (row-aligned with samples),
preprocess/user_profiles.parquet, dataset/users.parquet and dataset/items.parquet; writes
rank/feature_spec.json, rank/user_features.parquet (the serving user features),
rank/item_features.parquet, rank/train.parquet and rank/test.parquet. The pandas engine (default) works
on blocks of whole users (bounded memory at any size); ``--engine spark`` computes the same tables with
Apache Spark window functions (``offline/rank/features_spark.py``).
"""

from __future__ import annotations

import logging
import sys

import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from data_exchange_center import schema as S
from data_exchange_center.artifacts import (
    ArtifactError,
    parquet_chunks,
    read_parquet,
    read_parquet_blocks,
    update_metrics,
    write_metadata,
    write_parquet,
)
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.paths import ArtifactPaths
from offline.common.dataset import dataset_name
from offline.common.spark import DEFAULT_ENGINE, add_engine_argument, spark_session
from offline.common.stage import run_stage, stage_parser
from offline.common.user_states import BLOCK_ROWS, user_blocks
from offline.preprocess.pit_features import list_genres
from offline.rank.features import (
    ParquetColumns,
    block_profiles,
    build_block_rows,
    build_feature_spec,
    build_item_features,
    check_inputs,
    pit_input_columns,
)
from offline.rank.features_spark import check_coverage, ranking_rows_spark

log = logging.getLogger(__name__)


def feature_engi(paths: ArtifactPaths, block_rows: int = BLOCK_ROWS, engine: str = DEFAULT_ENGINE) -> FeatureSpec:
    """Build the ranking features from the preprocess artifacts and write them to ``paths.rank_dir``."""
    users = read_parquet(paths.users_path, S.USERS_COLUMNS)
    items = read_parquet(paths.items_path, S.ITEMS_COLUMNS)
    dataset = dataset_name(paths)
    genres = list_genres(items)
    item_features = build_item_features(items, genres)
    if engine == "spark":
        check_coverage(read_parquet(paths.samples_path, (S.USER_ID, S.ITEM_ID)), users, item_features)
        with spark_session("s1_feature_engi") as spark:
            counts = ranking_rows_spark(spark, paths, users, item_features, genres)
    else:
        counts = ranking_rows_pandas(paths, users, item_features, genres, block_rows)
    for name, split in (("n_train", S.SPLIT_TRAIN), ("n_test", S.SPLIT_TEST)):
        if not counts[name]:
            raise ArtifactError(f"samples.parquet has no {split} rows: re-run offline/preprocess/s1_data_split.py")
    spec = build_feature_spec(ParquetColumns(paths.rank_train_path), users, genres, dataset)
    spec.save(paths.feature_spec_path)
    write_parquet(item_features, paths.item_features_path)
    outputs = {
        "n_features": spec.n_features,
        "columns": spec.columns,
        "vocab_sizes": spec.vocab_sizes,
        **counts,
        "n_items": len(item_features),
    }
    write_metadata(paths.rank_dir, "s1_feature_engi", outputs, dataset=dataset, config={"engine": engine})
    update_metrics(paths.metrics_path, {"rank": {"n_features": spec.n_features}})
    log.info(
        "%d features (%d sparse, %d dense); wrote %s, %s, %s, %s (%d rows), %s (%d rows)",
        spec.n_features, len(spec.categorical), len(spec.dense), paths.feature_spec_path, paths.user_features_path,
        paths.item_features_path, paths.rank_train_path, counts["n_train"], paths.rank_test_path, counts["n_test"],
    )  # fmt: skip
    return spec


def ranking_rows_pandas(
    paths: ArtifactPaths, users: pd.DataFrame, item_features: pd.DataFrame, genres: list[str], block_rows: int
) -> dict[str, int]:
    """The pandas engine: train, test and serving user rows, one block of whole users at a time
    (``user_blocks``), so memory stays bounded whatever the number of ratings. Returns the row counts."""
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    profiles = read_parquet(paths.user_profiles_path, (S.USER_ID,))
    if not paths.pit_features_path.exists():
        raise ArtifactError(f"missing artifact {paths.pit_features_path}: run offline/preprocess/s2_term_trans.py")
    pit_file = pq.ParquetFile(paths.pit_features_path)
    check_inputs(samples, pit_file.metadata.num_rows, pit_file.schema_arrow.names, profiles, genres)
    blocks = user_blocks(samples[S.USER_ID].to_numpy(), block_rows)
    sizes = [b.stop - b.start for b in blocks]
    pit_blocks = read_parquet_blocks(paths.pit_features_path, sizes, pit_input_columns(genres))
    user_parts, n_train, n_test = [], 0, 0
    with parquet_chunks(paths.rank_train_path) as write_train, parquet_chunks(paths.rank_test_path) as write_test:
        progress = tqdm(zip(blocks, pit_blocks, strict=True), total=len(blocks), desc="ranking features",
                        unit="block", disable=len(blocks) == 1)  # fmt: skip
        for block, pit in progress:
            part = samples.iloc[block].reset_index(drop=True)
            rows = build_block_rows(part, pit, block_profiles(profiles, part), users, item_features, genres)
            write_train(rows.train)
            write_test(rows.test)
            user_parts.append(rows.user_features)
            n_train, n_test = n_train + len(rows.train), n_test + len(rows.test)
            del rows
    del samples
    user_features = pd.concat(user_parts, ignore_index=True)
    write_parquet(user_features, paths.user_features_path)
    return {"n_train": n_train, "n_test": n_test, "n_users": len(user_features), "n_blocks": len(blocks)}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_engine_argument(parser)
    args = parser.parse_args(argv)
    return run_stage("s1_feature_engi", args, lambda paths: feature_engi(paths, engine=args.engine))


if __name__ == "__main__":
    sys.exit(main())
