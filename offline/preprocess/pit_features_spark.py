"""Point-in-time terms on Apache Spark: ``pit_features.py`` as window functions, same artifacts, same values.

For each impression, per genre, the impressions and clicks among the user's previous ``PIT_WINDOW``
impressions are sums over the window frame ``rowsBetween(-PIT_WINDOW, -1)`` of the user's timeline;
the whole-history statistics are sums over ``rowsBetween(unboundedPreceding, -1)``. The online profile
is the same sums over the user's last ``PIT_WINDOW`` offline impressions. Arithmetic is in doubles with
the formulas of ``history_stats``, so every value equals the pandas engine's (integers exactly, the
float32 rates bit for bit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.paths import ArtifactPaths
from offline.common.spark import read_artifact, write_artifact

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

OFFLINE_COUNT = "_n_offline"


def genres_of(items: DataFrame) -> list[str]:
    """All genres of the catalogue, sorted as ``list_genres`` sorts them (Python's string order)."""
    from pyspark.sql import functions as F

    rows = items.select(F.explode(S.GENRES).alias("g")).distinct().collect()
    return sorted(row["g"] for row in rows)


def with_genre_flags(samples: DataFrame, items: DataFrame, genres: list[str]) -> DataFrame:
    """``samples`` with one 0/1 column per genre of its item (0 for an item outside the catalogue)."""
    from pyspark.sql import functions as F

    flags = items.select(
        S.ITEM_ID, *[F.array_contains(S.GENRES, g).cast("int").alias(S.genre_flag_column(g)) for g in genres]
    )
    joined = samples.join(F.broadcast(flags), on=S.ITEM_ID, how="left")
    return joined.fillna(0, subset=[S.genre_flag_column(g) for g in genres])


def _history_columns(n: Column, clicks: Column, rating_sum: Column) -> list[Column]:
    """``history_stats``'s three columns from the counts before a position (doubles, then float32)."""
    from pyspark.sql import functions as F

    weight = F.lit(S.HISTORY_PRIOR_WEIGHT)
    click_rate = (clicks + weight * F.lit(S.PRIOR_CLICK_RATE)) / (n + weight)
    mean_rating = (rating_sum + weight * F.lit(S.PRIOR_MEAN_RATING)) / (n + weight)
    return [
        n.cast("float").alias(S.HIST_N),
        click_rate.cast("float").alias(S.HIST_CLICK_RATE),
        mean_rating.cast("float").alias(S.HIST_MEAN_RATING),
    ]


def training_pit_features_spark(flagged: DataFrame, genres: list[str]) -> DataFrame:
    """Per impression (with ``userid`` and ``seq`` kept for ordering): counts from strictly earlier rows."""
    return flagged.select(S.USER_ID, S.SEQ, *pit_count_columns(genres))


def pit_count_columns(genres: list[str]) -> list[Column]:
    """The point-in-time columns (``imp_*``, ``clk_*``, then ``hist_*``) of each row of a timeline with the
    genre flag columns, from the user's strictly earlier rows (window functions over ``userid``, ``seq``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    timeline = Window.partitionBy(S.USER_ID).orderBy(S.SEQ)
    window = timeline.rowsBetween(-S.PIT_WINDOW, -1)
    before = timeline.rowsBetween(Window.unboundedPreceding, -1)
    counts = [
        F.coalesce(F.sum(S.genre_flag_column(g)).over(window), F.lit(0)).cast("short").alias(S.impression_column(g))
        for g in genres
    ]
    counts += [
        F.coalesce(F.sum(F.col(S.genre_flag_column(g)) * F.col(S.LABEL)).over(window), F.lit(0))
        .cast("short")
        .alias(S.click_column(g))
        for g in genres
    ]
    history = _history_columns(
        F.count(F.lit(1)).over(before).cast("double"),
        F.coalesce(F.sum(F.col(S.LABEL).cast("double")).over(before), F.lit(0.0)),
        F.coalesce(F.sum(F.col(S.RATING).cast("double")).over(before), F.lit(0.0)),
    )
    return counts + history


def online_user_profiles_spark(flagged: DataFrame, genres: list[str]) -> DataFrame:
    """Per user: the counts of a next impression after the offline period, and the genre terms."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    is_offline = (F.col(S.SPLIT) != F.lit(S.SPLIT_ONLINE)).cast("int")
    rows = flagged.withColumn(OFFLINE_COUNT, F.sum(is_offline).over(Window.partitionBy(S.USER_ID)))
    seq, n_offline = F.col(S.SEQ), F.col(OFFLINE_COUNT)
    in_window = (seq < n_offline) & (seq >= n_offline - S.PIT_WINDOW)
    before = seq < n_offline

    def window_sum(value: Column) -> Column:
        return F.coalesce(F.sum(F.when(in_window, value).otherwise(F.lit(0))), F.lit(0)).cast("short")

    flag = {g: F.col(S.genre_flag_column(g)) for g in genres}
    aggregates = [window_sum(flag[g]).alias(S.impression_column(g)) for g in genres]
    aggregates += [window_sum(flag[g] * F.col(S.LABEL)).alias(S.click_column(g)) for g in genres]
    aggregates += _history_columns(
        F.sum(F.when(before, 1.0).otherwise(0.0)),
        F.sum(F.when(before, F.col(S.LABEL).cast("double")).otherwise(0.0)),
        F.sum(F.when(before, F.col(S.RATING).cast("double")).otherwise(0.0)),
    )
    profiles = rows.groupBy(S.USER_ID).agg(*aggregates)
    terms = F.array(*[F.when(F.col(S.click_column(g)) >= S.TERM_MIN_CLICKS, F.lit(g)) for g in genres])
    return profiles.withColumn(S.TERMS, F.filter(terms, lambda term: term.isNotNull()))


def pit_template(genres: list[str], n_rows: int = 0) -> pd.DataFrame:
    """``n_rows`` zero rows with the dtypes of preprocess/pit_features.parquet (the pandas engine's)."""
    columns: dict[str, Any] = {name: np.zeros(n_rows, np.int16) for name in S.pit_columns(genres)}
    columns.update({name: np.zeros(n_rows, np.float32) for name in S.HISTORY_COLUMNS})
    return pd.DataFrame(columns)


def profiles_template(genres: list[str]) -> pd.DataFrame:
    """One row with the dtypes of preprocess/user_profiles.parquet (a row: Arrow infers the list type)."""
    template = pit_template(genres, n_rows=1)
    template.insert(0, S.USER_ID, np.zeros(1, np.int64))
    template[S.TERMS] = [["genre"]]
    return template


def item_terms_template() -> pd.DataFrame:
    return pd.DataFrame({S.ITEM_ID: np.zeros(1, np.int64), S.TERMS: [["genre"]]})


def term_trans_spark(spark: SparkSession, paths: ArtifactPaths) -> dict[str, Any]:
    """Write pit_features, item_terms and user_profiles with Spark; return the stage's outputs summary."""
    from pyspark.sql import functions as F

    samples = read_artifact(spark, paths.samples_path, (S.USER_ID, S.ITEM_ID, S.RATING, S.LABEL, S.SEQ, S.SPLIT))
    items = read_artifact(spark, paths.items_path, (S.ITEM_ID, S.GENRES))
    genres = genres_of(items)
    flagged = with_genre_flags(samples, items, genres).cache()
    try:
        pit = training_pit_features_spark(flagged, genres)
        n_pit = write_artifact(pit, paths.pit_features_path, pit_template(genres), sort_by=(S.USER_ID, S.SEQ))
        # item_terms keeps the catalogue's order, as the pandas engine does
        item_terms = items.select(
            S.ITEM_ID, F.col(S.GENRES).alias(S.TERMS), F.monotonically_increasing_id().alias("_row")
        )
        n_items = write_artifact(item_terms, paths.item_terms_path, item_terms_template(), sort_by=("_row",))
        profiles = online_user_profiles_spark(flagged, genres)
        n_profiles = write_artifact(profiles, paths.user_profiles_path, profiles_template(genres), sort_by=(S.USER_ID,))
    finally:
        flagged.unpersist()
    return {"genres": genres, "n_pit_rows": n_pit, "n_profiles": n_profiles, "n_items": n_items}
