"""Ranking stage 1: the feature specification and the ranking feature tables.

Reads preprocess/samples.parquet, preprocess/pit_features.parquet (row-aligned with samples),
preprocess/user_profiles.parquet, dataset/users.parquet and dataset/items.parquet; writes
rank/feature_spec.json, rank/user_features.parquet (the serving user features),
rank/item_features.parquet, rank/train.parquet and rank/test.parquet.
"""

from __future__ import annotations

import logging
import sys

from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet, update_metrics, write_metadata, write_parquet
from data_exchange_center.paths import ArtifactPaths
from offline.common.dataset import dataset_name
from offline.common.stage import run_stage, stage_parser
from offline.rank.features import RankingTables, build_ranking_tables

log = logging.getLogger(__name__)


def feature_engi(paths: ArtifactPaths) -> RankingTables:
    """Build the ranking features from the preprocess artifacts and write them to ``paths.rank_dir``."""
    samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
    pit = read_parquet(paths.pit_features_path)
    profiles = read_parquet(paths.user_profiles_path, (S.USER_ID,))
    users = read_parquet(paths.users_path, S.USERS_COLUMNS)
    items = read_parquet(paths.items_path, S.ITEMS_COLUMNS)
    dataset = dataset_name(paths)
    tables = build_ranking_tables(samples, pit, profiles, users, items, dataset)
    del samples, pit
    tables.spec.save(paths.feature_spec_path)
    write_parquet(tables.user_features, paths.user_features_path)
    write_parquet(tables.item_features, paths.item_features_path)
    write_parquet(tables.train, paths.rank_train_path)
    write_parquet(tables.test, paths.rank_test_path)
    outputs = {
        "n_features": tables.spec.n_features,
        "columns": tables.spec.columns,
        "vocab_sizes": tables.spec.vocab_sizes,
        "n_train": len(tables.train),
        "n_test": len(tables.test),
        "n_users": len(tables.user_features),
        "n_items": len(tables.item_features),
    }
    write_metadata(paths.rank_dir, "s1_feature_engi", outputs, dataset=dataset)
    update_metrics(paths.metrics_path, {"rank": {"n_features": tables.spec.n_features}})
    log.info(
        "%d features (%d sparse, %d dense); wrote %s, %s, %s, %s (%d rows), %s (%d rows)",
        tables.spec.n_features, len(tables.spec.categorical), len(tables.spec.dense), paths.feature_spec_path,
        paths.user_features_path, paths.item_features_path, paths.rank_train_path, len(tables.train),
        paths.rank_test_path, len(tables.test),
    )  # fmt: skip
    return tables


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__ or "").parse_args(argv)
    return run_stage("s1_feature_engi", args, feature_engi)


if __name__ == "__main__":
    sys.exit(main())
