"""The ranking feature tables on Apache Spark: ``features.py`` as window functions, same artifacts, same values.

Every user feature of a row is a function of the user's strictly earlier rows, so each one is a window
aggregate over the user's timeline (``partitionBy(userid).orderBy(seq)``): the point-in-time counts
and history statistics of ``pit_features_spark``, the recent windows (``rowsBetween(-W, -1)``) and
the genre affinities (``rowsBetween(unboundedPreceding, -1)``). The serving row of a user is the same
window at a hypothetical next impression after the offline period: a phantom row at ``seq = n_offline``
is added to the user's offline rows, so training and serving rows come from one expression.

Arithmetic follows ``offline/rank/user_history.py`` operation by operation: the windows in doubles then
rounded to float32, the affinities in float32 (Spark's float arithmetic; its divisions run in double and
are rounded once, which gives the float32 quotient). The parity test compares every value with the
pandas engine's. Small tables (the catalogue's genre flags, the demographics, the specification's
vocabularies and statistics) are computed on the driver with the pandas engine's own functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_parquet, read_parquet_blocks
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.user_history import (
    AFFINITY_PRIOR_WEIGHT,
    LONG_RATE_PREFIX,
    LONG_SHARE_PREFIX,
    RECENT_CLICK_RATE_PREFIX,
    RECENT_MEAN_RATING_PREFIX,
    RECENT_RATE_PREFIX,
    RECENT_WINDOWS,
)
from offline.common.spark import read_artifact, write_artifact
from offline.preprocess.pit_features import item_genre_flags, online_user_profiles, training_pit_features
from offline.preprocess.pit_features_spark import pit_count_columns
from offline.rank.features import BlockRows, build_block_rows, demographic_columns

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SERVING = "serving"  # the split of the phantom rows (the position after each user's offline period)
TEMPLATE_ROWS = 100_000  # the first rows of samples.parquet, from which one user's pandas rows give the dtypes


def history_feature_columns_spark(genres: list[str]) -> list[Column]:
    """Recent windows then genre affinities (``window_columns`` + ``all_affinity_columns`` order) of each row of
    a timeline with the genre flags and the point-in-time columns (``hist_click_rate``, ``imp_*``, ``clk_*``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    timeline = Window.partitionBy(S.USER_ID).orderBy(S.SEQ)
    before = timeline.rowsBetween(Window.unboundedPreceding, -1)

    def total(value: Column, frame: Any) -> Column:
        return F.coalesce(F.sum(value).over(frame), F.lit(0))

    weight = F.lit(S.HISTORY_PRIOR_WEIGHT)
    rates, ratings = [], []
    for w in RECENT_WINDOWS:
        frame = timeline.rowsBetween(-w, -1)
        n = F.count(F.lit(1)).over(frame).cast("double")
        clicks = total(F.col(S.LABEL).cast("double"), frame)
        rating_sum = total(F.col(S.RATING).cast("double"), frame)
        rates.append(((clicks + weight * F.lit(S.PRIOR_CLICK_RATE)) / (n + weight)).cast("float").alias(
            RECENT_CLICK_RATE_PREFIX + str(w)))  # fmt: skip
        ratings.append(((rating_sum + weight * F.lit(S.PRIOR_MEAN_RATING)) / (n + weight)).cast("float").alias(
            RECENT_MEAN_RATING_PREFIX + str(w)))  # fmt: skip

    prior = F.col(S.HIST_CLICK_RATE).cast("float")
    pseudo = F.lit(AFFINITY_PRIOR_WEIGHT).cast("float")
    smoothed = pseudo * prior  # float32, as numpy's weight * prior
    n_history = F.greatest(F.col(S.HIST_N).cast("float"), F.lit(1.0).cast("float"))
    long_rate, recent_rate, share = [], [], []
    for g in genres:
        flag = F.col(S.genre_flag_column(g)).cast("int")
        long_imp = total(flag, before).cast("float")
        long_clk = total(flag * F.col(S.LABEL).cast("int"), before).cast("float")
        recent_imp = F.col(S.impression_column(g)).cast("float")
        recent_clk = F.col(S.click_column(g)).cast("float")
        slug = S.genre_slug(g)
        long_rate.append(((long_clk + smoothed) / (long_imp + pseudo)).cast("float").alias(LONG_RATE_PREFIX + slug))
        recent_rate.append(
            ((recent_clk + smoothed) / (recent_imp + pseudo)).cast("float").alias(RECENT_RATE_PREFIX + slug)
        )
        share.append((long_imp / n_history).cast("float").alias(LONG_SHARE_PREFIX + slug))
    return rates + ratings + long_rate + recent_rate + share


def with_serving_rows(flagged: DataFrame, genres: list[str]) -> DataFrame:
    """The offline rows of every user, then one phantom row (split ``serving``, no item) at ``seq = n_offline``."""
    from pyspark.sql import functions as F

    is_offline = F.col(S.SPLIT) != F.lit(S.SPLIT_ONLINE)
    phantom = flagged.groupBy(S.USER_ID).agg(F.sum(is_offline.cast("int")).alias(S.SEQ))
    columns = {name: F.lit(0) for name in (S.ITEM_ID, S.LABEL, S.RATING, *map(S.genre_flag_column, genres))}
    phantom = phantom.select(
        S.USER_ID,
        *[value.cast(flagged.schema[name].dataType).alias(name) for name, value in columns.items()],
        F.col(S.SEQ).cast(flagged.schema[S.SEQ].dataType).alias(S.SEQ),
        F.lit(SERVING).alias(S.SPLIT),
    )
    return flagged.where(is_offline).unionByName(phantom)


def pandas_templates(
    paths: ArtifactPaths, users: pd.DataFrame, item_features: pd.DataFrame, genres: list[str]
) -> BlockRows:
    """One row of each table as the pandas engine writes it (its column order and dtypes): the rows of the
    first user of samples.parquet."""
    n_rows = min(TEMPLATE_ROWS, pq.ParquetFile(paths.samples_path).metadata.num_rows)
    head = next(read_parquet_blocks(paths.samples_path, [n_rows], list(S.SAMPLES_COLUMNS)))
    first_user = head[head[S.USER_ID] == head[S.USER_ID].iloc[0]].reset_index(drop=True)
    flags = item_genre_flags(read_parquet(paths.items_path, S.ITEMS_COLUMNS), genres)
    pit = training_pit_features(first_user, flags, genres)
    profiles = online_user_profiles(first_user, flags, genres)
    rows = build_block_rows(first_user, pit, profiles, users, item_features, genres)
    if rows.train.empty:
        raise ArtifactError(f"user {first_user[S.USER_ID].iloc[0]} has no train rows: re-run the split")
    return BlockRows(rows.train.head(1), rows.train.head(1), rows.user_features.head(1))


def ranking_rows_spark(
    spark: SparkSession, paths: ArtifactPaths, users: pd.DataFrame, item_features: pd.DataFrame, genres: list[str]
) -> dict[str, int]:
    """Write rank/train.parquet, rank/test.parquet and rank/user_features.parquet with Spark; the row counts."""
    from pyspark.sql import functions as F

    templates = pandas_templates(paths, users, item_features, genres)
    samples = read_artifact(spark, paths.samples_path, (S.USER_ID, S.ITEM_ID, S.RATING, S.LABEL, S.SEQ, S.SPLIT))
    samples = samples.withColumn(S.SPLIT, F.col(S.SPLIT).cast("string"))
    flags = spark.createDataFrame(item_features)
    flagged = samples.join(F.broadcast(flags), on=S.ITEM_ID, how="inner")
    timeline = with_serving_rows(flagged, genres)
    with_pit = timeline.select("*", *pit_count_columns(genres))
    features = with_pit.select("*", *history_feature_columns_spark(genres))
    demographics = demographic_columns(users)
    if demographics:
        features = features.join(F.broadcast(spark.createDataFrame(users[[S.USER_ID, *demographics]])), S.USER_ID)
    features = features.cache()
    try:
        counts = {}
        for name, split, path, template in (
            ("n_train", S.SPLIT_TRAIN, paths.rank_train_path, templates.train),
            ("n_test", S.SPLIT_TEST, paths.rank_test_path, templates.test),
            ("n_users", SERVING, paths.user_features_path, templates.user_features),
        ):
            rows = features.where(F.col(S.SPLIT) == F.lit(split))
            counts[name] = write_artifact(rows, path, template, sort_by=(S.USER_ID, S.SEQ))
    finally:
        features.unpersist()
    return counts


def check_coverage(samples: pd.DataFrame, users: pd.DataFrame, item_features: pd.DataFrame) -> None:
    """What the pandas engine refuses, refused on the driver before Spark runs: rated items outside the
    catalogue, users without demographics (where the dataset has them)."""
    unknown_items = np.setdiff1d(samples[S.ITEM_ID].unique(), item_features[S.ITEM_ID].to_numpy())
    if len(unknown_items):
        raise ArtifactError(
            f"{len(unknown_items)} rated items are missing from items.parquet (e.g. {unknown_items[:5].tolist()}): "
            "re-run the preprocess stages on one dataset"
        )
    if demographic_columns(users):
        unknown_users = np.setdiff1d(samples[S.USER_ID].unique(), users[S.USER_ID].to_numpy())
        if len(unknown_users):
            raise ArtifactError(
                f"{len(unknown_users)} users are missing from users.parquet (e.g. {unknown_users[:5].tolist()}): "
                "re-run the preprocess stages on one dataset"
            )
