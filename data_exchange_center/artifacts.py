"""Atomic artifact writers and checked readers.

Every artifact is written to a temporary name in its own folder and renamed into place, so an
interrupted stage never leaves a truncated file that a later stage would read. Beside each artifact
folder a ``metadata.json`` records what wrote what (stage, dataset, config, row counts, library
versions, time). Formats are Parquet, NumPy (``allow_pickle=False``) and JSON only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


class ArtifactError(Exception):
    """An artifact is missing or does not match its contract."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are read by other users (service containers)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


@contextlib.contextmanager
def parquet_chunks(path: Path) -> Iterator[Callable[[pd.DataFrame], None]]:
    """Write a Parquet artifact frame by frame: the file equals ``write_parquet`` of the frames' concatenation
    (the first frame's schema, pandas metadata included), and appears at ``path`` only when all were written."""
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None

        def write(frame: pd.DataFrame) -> None:
            nonlocal writer
            table = pa.Table.from_pandas(frame, preserve_index=False, schema=writer.schema if writer else None)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)

        try:
            yield write
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"no rows were written to {path}")


def read_parquet_blocks(path: Path, sizes: Iterable[int], columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Consecutive blocks of ``sizes`` rows of a Parquet artifact, read batch by batch (bounded memory)."""
    if not path.exists():
        raise ArtifactError(f"missing artifact {path}: run the stage that writes it first")
    source = pq.ParquetFile(path)
    batches = source.iter_batches(batch_size=65_536, columns=columns)
    buffered = pa.Table.from_batches([], schema=source.schema_arrow).select(columns or source.schema_arrow.names)
    for size in sizes:
        parts = [buffered]
        while sum(len(part) for part in parts) < size:
            batch = next(batches, None)
            if batch is None:
                raise ArtifactError(f"{path} has fewer rows than the inputs it is aligned with: re-run its stage")
            parts.append(pa.Table.from_batches([batch]))
        table = pa.concat_tables(parts) if len(parts) > 1 else buffered
        yield table.slice(0, size).to_pandas()
        buffered = table.slice(size)


def write_json(obj: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    return path


def read_parquet(
    path: Path, required_columns: tuple[str, ...] = (), filters: list[tuple[str, str, Any]] | None = None
) -> pd.DataFrame:
    """Read a Parquet artifact (only the rows that pass pyarrow ``filters``, when given); a missing file or
    column is an ``ArtifactError`` naming both."""
    if not path.exists():
        raise ArtifactError(f"missing artifact {path}: run the stage that writes it first")
    df = pd.read_parquet(path, filters=filters)
    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        raise ArtifactError(f"artifact {path} lacks columns {missing}; it has {list(df.columns)}")
    return df


def read_json(path: Path) -> Any:
    if not path.exists():
        raise ArtifactError(f"missing artifact {path}: run the stage that writes it first")
    return json.loads(path.read_text())


def read_npz(path: Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ArtifactError(f"missing artifact {path}: run the stage that writes it first")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ArtifactError(f"artifact {path} lacks arrays {missing}")
    return arrays


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("numpy", "pandas", "pyarrow", "torch", "onnx", "onnxruntime", "feast"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[name] = importlib_metadata.version(name)
    return versions


def write_metadata(
    folder: Path,
    stage: str,
    outputs: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    dataset: str | None = None,
) -> Path:
    """Write ``folder/metadata.json``, merging the entry of ``stage`` with those of other stages."""
    path = folder / "metadata.json"
    existing = read_json(path) if path.exists() else {}
    existing[stage] = {
        "dataset": dataset,
        "config": dict(config or {}),
        "outputs": dict(outputs),
        "library_versions": library_versions(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_json(existing, path)


def update_metrics(metrics_path: Path, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the metrics report (nested dicts are merged one level deep)."""
    metrics: dict[str, Any] = read_json(metrics_path) if metrics_path.exists() else {}
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(metrics.get(key), dict):
            metrics[key].update(value)
        else:
            metrics[key] = value
    write_json(metrics, metrics_path)
    return metrics


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
