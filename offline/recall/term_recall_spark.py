"""The term-recall tables on Apache Spark: popularity and the users' seen lists, same artifacts and rows.

``popularity_table`` and ``user_seen_table`` of ``offline/recall/tables.py`` as Spark plans:
items by positive offline impressions (most first, ties by item id), and per user the offline items
and labels in time order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.paths import ArtifactPaths
from offline.common.spark import read_artifact, write_artifact

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def popularity_table_spark(samples: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    positives = samples.where((F.col(S.SPLIT) != F.lit(S.SPLIT_ONLINE)) & (F.col(S.LABEL) == 1))
    return positives.groupBy(S.ITEM_ID).agg(F.count(F.lit(1)).cast("float").alias(S.SCORE))


def user_seen_table_spark(samples: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    offline = samples.where(F.col(S.SPLIT) != F.lit(S.SPLIT_ONLINE))
    timeline = F.array_sort(F.collect_list(F.struct(S.SEQ, S.ITEM_ID, S.LABEL, S.RATING)))
    per_user = offline.groupBy(S.USER_ID).agg(timeline.alias("_timeline"))
    return per_user.select(
        S.USER_ID,
        F.col(f"_timeline.{S.ITEM_ID}").alias(S.ITEMS),
        F.col(f"_timeline.{S.LABEL}").alias(S.LABELS),
        F.col(f"_timeline.{S.RATING}").alias(S.RATINGS),
    )


def user_seen_template() -> pd.DataFrame:
    """One row with the dtypes of recall/user_seen.parquet (a row: Arrow infers the list types)."""
    return pd.DataFrame(
        {S.USER_ID: np.zeros(1, np.int64), S.ITEMS: [np.zeros(1, np.int64)], S.LABELS: [np.zeros(1, np.int8)],
         S.RATINGS: [np.zeros(1, np.float32)]}
    )


def popularity_template() -> pd.DataFrame:
    return pd.DataFrame({S.ITEM_ID: np.zeros(0, np.int64), S.SCORE: np.zeros(0, np.float32)})


def term_recall_tables_spark(spark: SparkSession, paths: ArtifactPaths) -> tuple[int, int]:
    """Write recall/popularity.parquet and recall/user_seen.parquet; return their row counts."""
    from pyspark.sql import functions as F

    samples = read_artifact(spark, paths.samples_path, (S.USER_ID, S.ITEM_ID, S.RATING, S.LABEL, S.SEQ, S.SPLIT))
    by_popularity = (F.col(S.SCORE).desc(), F.col(S.ITEM_ID).asc())  # as pandas' stable sort of item-sorted counts
    n_popular = write_artifact(
        popularity_table_spark(samples), paths.popularity_path, popularity_template(), sort_by=by_popularity
    )
    seen = user_seen_table_spark(samples)
    n_users = write_artifact(seen, paths.user_seen_path, user_seen_template(), sort_by=(S.USER_ID,))
    return n_popular, n_users
