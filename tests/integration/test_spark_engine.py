"""The Spark engine writes the pandas engine's artifacts: same files, schemas, rows and values.

One synthetic dataset goes through the split, the point-in-time terms, the term-recall tables and the
ranking features twice, once per engine, into two data folders; every artifact is then compared: the
Arrow schema (types and the pandas metadata that gives the split its categories), the row count, and
every value (integers and the split exactly, floats to 1e-6); the feature specifications are equal.
Spark runs in local mode in a JVM that this test session starts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_json, write_parquet
from data_exchange_center.paths import ArtifactPaths
from offline.common.spark import spark_session
from offline.preprocess.fetch import fetch_dataset
from offline.preprocess.s1_data_split import data_split
from offline.preprocess.s2_term_trans import term_trans
from offline.preprocess.split import split_by_time
from offline.preprocess.split_spark import read_ratings_with_file_order, split_by_time_spark
from offline.preprocess.synthetic import SyntheticConfig
from offline.rank.s1_feature_engi import feature_engi
from offline.recall.s1_term_recall import term_recall

pytestmark = pytest.mark.integration

SYNTHETIC = SyntheticConfig(n_users=300, n_items=200, n_ratings=24_000, seed=11)


def artifacts(paths: ArtifactPaths) -> dict[str, Path]:
    return {
        "samples": paths.samples_path,
        "pit_features": paths.pit_features_path,
        "item_terms": paths.item_terms_path,
        "user_profiles": paths.user_profiles_path,
        "popularity": paths.popularity_path,
        "user_seen": paths.user_seen_path,
        "rank_train": paths.rank_train_path,
        "rank_test": paths.rank_test_path,
        "user_features": paths.user_features_path,
        "item_features": paths.item_features_path,
    }


def run_stages(paths: ArtifactPaths, engine: str) -> None:
    data_split(paths, engine)
    term_trans(paths, engine)
    term_recall(paths, engine=engine)
    feature_engi(paths, engine=engine)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ArtifactPaths]:
    root = tmp_path_factory.mktemp("engines")
    pandas_paths = ArtifactPaths(root / "pandas")
    fetch_dataset("synthetic", pandas_paths, synthetic=SYNTHETIC)
    spark_paths = ArtifactPaths(root / "spark")
    shutil.copytree(pandas_paths.dataset_dir, spark_paths.dataset_dir)
    run_stages(pandas_paths, "pandas")
    run_stages(spark_paths, "spark")
    return {"pandas": pandas_paths, "spark": spark_paths}


@pytest.mark.parametrize("name", sorted(artifacts(ArtifactPaths(Path("."))).keys()))
def test_artifact_is_identical(engines: dict[str, ArtifactPaths], name: str) -> None:
    expected_path, actual_path = artifacts(engines["pandas"])[name], artifacts(engines["spark"])[name]
    assert pq.read_schema(actual_path).remove_metadata() == pq.read_schema(expected_path).remove_metadata()
    expected, actual = pd.read_parquet(expected_path), pd.read_parquet(actual_path)
    assert len(actual) == len(expected) > 0
    assert list(actual.columns) == list(expected.columns)
    for column in expected.columns:
        assert_column_equal(expected[column], actual[column], f"{name}.{column}")


def assert_column_equal(expected: pd.Series, actual: pd.Series, label: str) -> None:
    assert actual.dtype == expected.dtype, f"{label}: {actual.dtype} != {expected.dtype}"
    if expected.dtype == object:  # lists: compare element by element
        for row, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert list(a) == list(b), f"{label} row {row}: {list(b)} != {list(a)}"
    elif pd.api.types.is_float_dtype(expected.dtype):
        np.testing.assert_allclose(actual.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-6, err_msg=label)
    else:
        pd.testing.assert_series_equal(actual, expected, check_names=False, obj=label)


def test_split_counts_and_metadata_agree(engines: dict[str, ArtifactPaths]) -> None:
    pandas_meta = read_json(engines["pandas"].preprocess_dir / "metadata.json")
    spark_meta = read_json(engines["spark"].preprocess_dir / "metadata.json")
    for stage in ("s1_data_split", "s2_term_trans"):
        assert spark_meta[stage]["outputs"] == pandas_meta[stage]["outputs"], stage
        assert spark_meta[stage]["config"]["engine"] == "spark"
    rank_pandas = read_json(engines["pandas"].rank_dir / "metadata.json")["s1_feature_engi"]["outputs"]
    rank_spark = read_json(engines["spark"].rank_dir / "metadata.json")["s1_feature_engi"]["outputs"]
    assert rank_spark == {k: v for k, v in rank_pandas.items() if k != "n_blocks"}  # the same spec and row counts
    spec = engines["pandas"].feature_spec_path
    assert read_json(engines["spark"].feature_spec_path) == read_json(spec)
    counts = pandas_meta["s1_data_split"]["outputs"]
    assert counts["n_online"] == SYNTHETIC.n_users * S.N_ONLINE_PER_USER
    assert counts["n_train"] > counts["n_test"] > 0


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    with spark_session("test_spark_engine") as session:
        yield session


def test_ties_in_time_keep_file_order(spark: object, tmp_path: Path) -> None:
    """Equal timestamps within a user: both engines order by position in the file, then split alike."""
    rng = np.random.default_rng(5)
    n = 400
    ratings = pd.DataFrame(
        {
            S.USER_ID: rng.integers(1, 8, n).astype(np.int64),
            S.ITEM_ID: np.arange(n, dtype=np.int64),
            S.RATING: rng.integers(1, 6, n).astype(np.float32),
            S.TIMESTAMP: rng.integers(0, 5, n).astype(np.int64),  # many ties
        }
    )
    paths = ArtifactPaths(tmp_path)
    write_parquet(ratings, paths.ratings_path)
    expected = split_by_time(ratings)
    actual = (
        split_by_time_spark(read_ratings_with_file_order(spark, paths))  # type: ignore[arg-type]
        .orderBy(S.USER_ID, S.SEQ)
        .toPandas()
    )
    np.testing.assert_array_equal(actual[S.ITEM_ID].to_numpy(), expected[S.ITEM_ID].to_numpy())
    np.testing.assert_array_equal(actual[S.SPLIT].to_numpy(), expected[S.SPLIT].astype(str).to_numpy())
    np.testing.assert_array_equal(actual[S.LABEL].to_numpy(), expected[S.LABEL].to_numpy())
