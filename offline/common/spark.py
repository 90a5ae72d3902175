"""The Apache Spark engine of the feature pipeline: a session, and Parquet artifacts under the pandas contracts.

The stages that take ``--engine spark`` (split, point-in-time terms, term recall tables) compute with
Spark and write the same single-file Parquet artifacts, with the same Arrow schema and pandas metadata,
as the pandas engine: a later stage cannot tell which engine wrote its input.

Where Spark runs: ``local[*]`` (every core of this machine) unless a master is configured, the usual
way: ``SPARK_MASTER`` (for example ``spark://host:7077``, ``yarn``, ``k8s://https://...``), or
``spark.master`` in ``$SPARK_CONF_DIR/spark-defaults.conf`` or ``PYSPARK_SUBMIT_ARGS``. The driver's
memory is ``SPARK_DRIVER_MEMORY`` (default ``DEFAULT_DRIVER_MEMORY``). PySpark needs Java 17 or later
(``java`` on ``PATH`` or ``JAVA_HOME``) and comes with the ``spark`` extra.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_exchange_center.artifacts import atomic_path
from offline.common.stage import DataError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

ENGINES = ("pandas", "spark")
DEFAULT_ENGINE = "pandas"
DEFAULT_MASTER = "local[*]"
DEFAULT_DRIVER_MEMORY = "4g"
SHUFFLE_PARTITIONS = 8  # one machine: a few large partitions beat Spark's default of 200 small ones
BATCH_ROWS = 1_000_000  # rows per batch when a Spark output is rewritten as the contract's single file


def add_engine_argument(parser: object) -> None:
    """``--engine {pandas,spark}`` on a stage's argument parser."""
    parser.add_argument(  # type: ignore[attr-defined]
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="compute with pandas on this machine (default) or with Apache Spark (SPARK_MASTER, default local[*])",
    )


@contextmanager
def spark_session(app_name: str) -> Iterator[SparkSession]:
    """A Spark session for one stage; stopped when the stage ends."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise DataError("--engine spark needs PySpark: pip install -e '.[spark]' (and Java 17+)") from exc
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise DataError("--engine spark needs Java 17 or later: install a JRE (apt-get install default-jre-headless)")
    builder = SparkSession.builder.appName(app_name)
    master = os.environ.get("SPARK_MASTER")
    if master:
        builder = builder.master(master)
    elif "--master" not in os.environ.get("PYSPARK_SUBMIT_ARGS", "") and not _defaults_name_a_master():
        builder = builder.master(DEFAULT_MASTER)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode: no network interface needed
    session = (
        builder.config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", DEFAULT_DRIVER_MEMORY))
        .config("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    log.info("Spark %s, master %s", session.version, session.sparkContext.master)
    try:
        yield session
    finally:
        session.stop()


def _defaults_name_a_master() -> bool:
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    defaults = Path(conf_dir) / "spark-defaults.conf" if conf_dir else None
    if defaults is None or not defaults.exists():
        return False
    return any(line.split()[:1] == ["spark.master"] for line in defaults.read_text().splitlines())


def read_artifact(spark: SparkSession, path: Path, columns: Sequence[str]) -> DataFrame:
    """A Parquet artifact as a Spark DataFrame with ``columns``; a missing file or column is a ``DataError``."""
    if not path.exists():
        raise DataError(f"missing artifact {path}: run the stage that writes it first")
    frame = spark.read.parquet(str(path))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"artifact {path} lacks columns {missing}; it has {frame.columns}")
    return frame.select(*columns)


def write_artifact(frame: DataFrame, path: Path, template: pd.DataFrame, sort_by: Sequence[str | Column] = ()) -> int:
    """Write ``frame`` as the single Parquet file ``path`` with exactly the schema that pandas writes
    for ``template``: a frame with the contract's columns and dtypes, categoricals included (zero rows,
    or one where Arrow needs a value to infer a type, as for list columns).

    Spark writes one part file (sorted by ``sort_by`` when given) into a temporary folder beside
    ``path``; it is then rewritten batch by batch (bounded memory) in the contract's schema, with the
    pandas metadata, and renamed into place. Returns the number of rows.
    """
    schema = pa.Schema.from_pandas(template, preserve_index=False)
    categories = {
        name: pa.array([str(c) for c in template[name].cat.categories], type=pa.string())
        for name in template.columns
        if isinstance(template[name].dtype, pd.CategoricalDtype)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.spark.", dir=path.parent) as tmp:
        out_dir = Path(tmp) / "out"
        single = frame.coalesce(1)
        if sort_by:
            single = single.sortWithinPartitions(*sort_by)
        single.select(*template.columns).write.parquet(str(out_dir))
        parts = sorted(out_dir.glob("part-*.parquet"))
        n_rows = 0
        with atomic_path(path) as final, pq.ParquetWriter(final, schema) as writer:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS):
                    writer.write_table(_conform(pa.Table.from_batches([batch]), schema, categories))
                    n_rows += batch.num_rows
            if not n_rows:
                writer.write_table(schema.empty_table())
    return n_rows


def _conform(table: pa.Table, schema: pa.Schema, categories: dict[str, pa.Array]) -> pa.Table:
    """Cast ``table`` to ``schema``; a categorical column gets exactly the template's categories, in order."""
    columns = []
    for field in schema:
        column = table.column(field.name)
        if field.name in categories:
            columns.append(_to_dictionary(column, field, categories[field.name]))
        else:
            columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _to_dictionary(column: pa.ChunkedArray, field: pa.Field, categories: pa.Array) -> pa.ChunkedArray:
    indices = pc.index_in(column, value_set=categories)
    if indices.null_count > column.null_count:
        unknown = pc.filter(column, pc.and_(pc.is_null(indices), pc.is_valid(column)))
        raise DataError(f"column {field.name} has values {unknown.unique().to_pylist()[:5]} outside {categories}")
    index_type = field.type.index_type
    return pa.chunked_array(
        [pa.DictionaryArray.from_arrays(chunk.cast(index_type), categories) for chunk in indices.chunks],
        type=field.type,
    )
