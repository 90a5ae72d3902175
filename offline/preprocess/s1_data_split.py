"""Stage 1: implicit labels (rating > 3) and the per-user time-ordered split.

Reads dataset/ratings.parquet; writes preprocess/samples.parquet (one row per impression, sorted
by user and time, with label, seq and split) and records the split counts in reports/metrics.json.
"""

from __future__ import annotations

import logging
import sys

from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet, update_metrics, write_metadata, write_parquet
from data_exchange_center.paths import ArtifactPaths
from offline.common.dataset import dataset_name
from offline.common.spark import DEFAULT_ENGINE, add_engine_argument, spark_session
from offline.common.stage import run_stage, stage_parser
from offline.preprocess.split import split_by_time, summarize_split
from offline.preprocess.split_spark import data_split_spark

log = logging.getLogger(__name__)


def data_split(paths: ArtifactPaths, engine: str = DEFAULT_ENGINE) -> dict[str, int]:
    if engine == "spark":
        with spark_session("s1_data_split") as spark:
            counts = data_split_spark(spark, paths)
    else:
        ratings = read_parquet(paths.ratings_path, S.RATINGS_COLUMNS)
        samples = split_by_time(ratings)
        counts = summarize_split(samples)
        write_parquet(samples, paths.samples_path)
    dataset = dataset_name(paths)
    write_metadata(
        paths.preprocess_dir,
        "s1_data_split",
        counts,
        dataset=dataset,
        config={"n_online_per_user": S.N_ONLINE_PER_USER, "train_fraction": S.TRAIN_FRACTION, "engine": engine},
    )
    update_metrics(paths.metrics_path, {"dataset": dataset, "split": counts})
    log.info("split %s -> %s: %s", paths.ratings_path, paths.samples_path, counts)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    add_engine_argument(parser)
    args = parser.parse_args(argv)
    return run_stage("s1_data_split", args, lambda paths: data_split(paths, args.engine))


if __name__ == "__main__":
    sys.exit(main())
