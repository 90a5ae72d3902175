"""The split on Apache Spark: ``split_by_time`` of ``split.py`` as a Spark plan, same artifact, same rows.

Per user, impressions ordered by time, ties in file order (the row's position in ratings.parquet); the
last ``N_ONLINE_PER_USER`` are the online holdout, of the rest the first ``ceil(TRAIN_FRACTION * n)``
are train and the remainder test. The numbers are computed in the same IEEE doubles as numpy, so the
assignment is identical row for row (tests/integration/test_spark_engine.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from data_exchange_center import schema as S
from data_exchange_center.paths import ArtifactPaths
from offline.common.spark import read_artifact, write_artifact
from offline.common.stage import DataError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FILE_ROW = "_file_row"


def split_by_time_spark(ratings: DataFrame) -> DataFrame:
    """``ratings`` (with ``FILE_ROW``, the position in the input file) with label, seq and split."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    timeline = Window.partitionBy(S.USER_ID).orderBy(S.TIMESTAMP, FILE_ROW)
    per_user = Window.partitionBy(S.USER_ID)
    n_offline = F.greatest(F.count(F.lit(1)).over(per_user) - S.N_ONLINE_PER_USER, F.lit(0))
    # as split.py: n_train = ceil(n_offline * train_fraction - 1e-9), in doubles
    n_train = F.ceil(n_offline.cast("double") * F.lit(S.TRAIN_FRACTION) - F.lit(1e-9))
    seq = F.row_number().over(timeline) - 1
    return (
        ratings.withColumn(S.SEQ, seq.cast("int"))
        .withColumn("_n_offline", n_offline)
        .withColumn("_n_train", n_train)
        .withColumn(
            S.SPLIT,
            F.when(F.col(S.SEQ) >= F.col("_n_offline"), F.lit(S.SPLIT_ONLINE))
            .when(F.col(S.SEQ) < F.col("_n_train"), F.lit(S.SPLIT_TRAIN))
            .otherwise(F.lit(S.SPLIT_TEST)),
        )
        .withColumn(S.LABEL, (F.col(S.RATING) > F.lit(S.POSITIVE_RATING_THRESHOLD)).cast("byte"))
        .select(*S.SAMPLES_COLUMNS)
    )


def read_ratings_with_file_order(spark: SparkSession, paths: ArtifactPaths) -> DataFrame:
    """dataset/ratings.parquet with ``FILE_ROW``: ids that increase with the position in the file."""
    from pyspark.sql import functions as F

    ratings = read_artifact(spark, paths.ratings_path, S.RATINGS_COLUMNS)
    return ratings.withColumn(FILE_ROW, F.monotonically_increasing_id())


def samples_template(paths: ArtifactPaths) -> pd.DataFrame:
    """A zero-row frame with the dtypes that the pandas engine writes to preprocess/samples.parquet."""
    ratings = pq.read_schema(paths.ratings_path).empty_table().to_pandas()
    template = ratings[list(S.RATINGS_COLUMNS)].copy()
    template[S.LABEL] = np.zeros(0, dtype=np.int8)
    template[S.SEQ] = np.zeros(0, dtype=np.int32)
    template[S.SPLIT] = pd.Categorical([], categories=list(S.SPLITS))
    return template[list(S.SAMPLES_COLUMNS)]


def summarize_split_spark(samples: DataFrame) -> dict[str, int]:
    """The counts of ``summarize_split``, from one aggregation."""
    from pyspark.sql import functions as F

    row = samples.agg(
        *[F.sum((F.col(S.SPLIT) == name).cast("long")).alias(name) for name in S.SPLITS],
        F.sum(F.col(S.LABEL).cast("long")).alias("positive"),
        F.count(F.lit(1)).alias("total"),
    ).first()
    if row is None or not row["total"]:
        raise DataError("no ratings to split")
    counts = {f"n_{name}": int(row[name] or 0) for name in (S.SPLIT_ONLINE, S.SPLIT_TRAIN, S.SPLIT_TEST)}
    for name in (S.SPLIT_TRAIN, S.SPLIT_TEST):
        if not counts[f"n_{name}"]:
            raise DataError(f"the {name} split is empty: users need more than {S.N_ONLINE_PER_USER} ratings")
    positive = int(row["positive"] or 0)
    return {**counts, "n_positive": positive, "n_negative": int(row["total"]) - positive}


def data_split_spark(spark: SparkSession, paths: ArtifactPaths) -> dict[str, int]:
    """Write preprocess/samples.parquet with Spark (sorted by user, then seq); return the split counts."""
    samples = split_by_time_spark(read_ratings_with_file_order(spark, paths)).cache()
    try:
        counts = summarize_split_spark(samples)
        write_artifact(samples, paths.samples_path, samples_template(paths), sort_by=(S.USER_ID, S.SEQ))
    finally:
        samples.unpersist()
    return counts
