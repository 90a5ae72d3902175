"""Get a MovieLens copy: download with checksum verification, read a local copy, or generate one."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_exchange_center import schema as S
from data_exchange_center.artifacts import write_metadata, write_parquet
from data_exchange_center.events import EVENT_SEQ
from data_exchange_center.paths import ArtifactPaths
from offline.common.stage import DataError
from offline.preprocess.datasets import LAYOUT_100K, LAYOUT_CSV, LAYOUT_DAT, RatingsDataset, read_dataset
from offline.preprocess.synthetic import SyntheticConfig, generate_synthetic

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
RAW_DIR_ENV = "RECSYS_RAW_DIR"
SYNTHETIC = "synthetic"

# Opens a URL for reading: a file-like response with ``read(n)`` and ``headers`` (``urllib.request.urlopen``).
UrlOpener = Callable[[str], AbstractContextManager[IO[bytes]]]


def open_url(url: str) -> AbstractContextManager[IO[bytes]]:
    """The default opener: ``urllib.request.urlopen`` with a 30 s timeout."""
    return urllib.request.urlopen(url, timeout=30)  # noqa: S310 -- GroupLens https URLs only


@dataclass(frozen=True)
class DatasetSource:
    name: str
    layout: str
    md5: str | None  # None: verified against GroupLens' published ``.zip.md5`` (the file changes over time)


DATASETS = {
    "ml-1m": DatasetSource("ml-1m", LAYOUT_DAT, "c4d9eecfca2ab87c1945afe126590906"),
    "ml-100k": DatasetSource("ml-100k", LAYOUT_100K, "0e33842e24a9c977be4e0107933c0723"),
    "ml-latest-small": DatasetSource("ml-latest-small", LAYOUT_CSV, None),
    "ml-25m": DatasetSource("ml-25m", LAYOUT_CSV, "6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-32m": DatasetSource("ml-32m", LAYOUT_CSV, None),
}
DATASET_NAMES = (*DATASETS, SYNTHETIC)


def resolve_raw_dir(raw_dir: Path | None) -> Path | None:
    if raw_dir is not None:
        return raw_dir
    env = os.environ.get(RAW_DIR_ENV)
    return Path(env) if env else None


def fetch_dataset(
    name: str,
    paths: ArtifactPaths,
    raw_dir: Path | None = None,
    synthetic: SyntheticConfig | None = None,
    fallback_to_synthetic: bool = False,
    opener: UrlOpener = open_url,
    events: pd.DataFrame | None = None,
) -> RatingsDataset:
    """Read (or download with ``opener``, or generate) dataset ``name`` and write the normalized tables of
    ``paths``; with ``events`` (the event log as a table), those are added as ratings (``add_events``)."""
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    raw_dir = resolve_raw_dir(raw_dir)
    source_note: str
    if name == SYNTHETIC:
        config = synthetic or SyntheticConfig()
        raw_dir = generate_synthetic(config, paths.data_dir / "raw" / SYNTHETIC)
        layout, source_note = LAYOUT_DAT, f"generated {config}"
    elif raw_dir is not None:
        layout, source_note = DATASETS[name].layout, f"local copy {raw_dir}"
    else:
        try:
            raw_dir = download_dataset(DATASETS[name], paths.data_dir / "raw", opener)
            layout, source_note = DATASETS[name].layout, f"downloaded from {GROUPLENS_URL.format(name=name)}"
        except DataError as exc:
            if not fallback_to_synthetic:
                raise
            config = synthetic or SyntheticConfig(n_users=2000, n_items=1500, n_ratings=200_000)
            log.warning("%s; FALLING BACK to the synthetic dataset (%s)", exc, config)
            raw_dir = generate_synthetic(config, paths.data_dir / "raw" / SYNTHETIC)
            name, layout, source_note = SYNTHETIC, LAYOUT_DAT, f"fallback: generated {config}"
    dataset = read_dataset(raw_dir, layout)
    event_seqs = empty_event_seqs()
    if events is not None:
        dataset, event_seqs = add_events(dataset, events)
        source_note += f"; {len(event_seqs)} ratings from the event log"
    write_dataset(dataset, paths, name, source_note)
    write_parquet(event_seqs, paths.event_seqs_path)  # always: a run without events leaves no stale table
    return dataset


def empty_event_seqs() -> pd.DataFrame:
    return pd.DataFrame({S.USER_ID: np.zeros(0, np.int64), S.ITEM_ID: np.zeros(0, np.int64),
                         EVENT_SEQ: np.zeros(0, np.int64)})  # fmt: skip


def add_events(dataset: RatingsDataset, events: pd.DataFrame) -> tuple[RatingsDataset, pd.DataFrame]:
    """The dataset with the event log (``data_exchange_center.events.EVENT_COLUMNS``, store order) appended
    as ratings after the dataset's own, so each event is its user's latest impression; and the ratings
    that came from events with their store sequence numbers (``userid``, ``itemid``, ``seq``).

    An event whose item is not in the catalogue is dropped (the service refuses those, so only an old log
    has them); when a user rated an item again, the latest rating stays. A new user gets a users row
    without demographics (missing values, which the feature encoding maps to "unknown")."""
    known_item = events[S.ITEM_ID].isin(dataset.items[S.ITEM_ID])
    if not known_item.all():
        log.warning("dropped %d events of items not in the catalogue", int((~known_item).sum()))
    taken = events[known_item].sort_values(EVENT_SEQ, kind="stable")
    if taken.empty:
        return dataset, empty_event_seqs()
    new_ratings = pd.DataFrame(
        {
            S.USER_ID: taken[S.USER_ID].to_numpy(np.int64),
            S.ITEM_ID: taken[S.ITEM_ID].to_numpy(np.int64),
            S.RATING: taken[S.RATING].to_numpy(np.float32),
            S.TIMESTAMP: taken[S.TIMESTAMP].to_numpy(np.int64),
        }
    )
    from_log = np.r_[np.zeros(len(dataset.ratings), bool), np.ones(len(new_ratings), bool)]
    seqs = np.r_[np.zeros(len(dataset.ratings), np.int64), taken[EVENT_SEQ].to_numpy(np.int64)]
    ratings = pd.concat([dataset.ratings, new_ratings], ignore_index=True)
    kept = ~ratings.duplicated([S.USER_ID, S.ITEM_ID], keep="last").to_numpy()
    ratings = ratings[kept].reset_index(drop=True).astype(dataset.ratings.dtypes.to_dict())
    event_seqs = pd.DataFrame({S.USER_ID: ratings[S.USER_ID].to_numpy(np.int64)[from_log[kept]],
                               S.ITEM_ID: ratings[S.ITEM_ID].to_numpy(np.int64)[from_log[kept]],
                               EVENT_SEQ: seqs[kept][from_log[kept]]})  # fmt: skip
    new_users = np.setdiff1d(new_ratings[S.USER_ID].unique(), dataset.users[S.USER_ID].to_numpy())
    users = dataset.users
    if len(new_users):
        extra = pd.DataFrame({S.USER_ID: new_users.astype(np.int64)})
        users = pd.concat([users, extra], ignore_index=True)
        for column, dtype in dataset.users.dtypes.items():
            if column != S.USER_ID and pd.api.types.is_integer_dtype(dtype):
                users[column] = users[column].astype("Int64")  # missing demographics of the new users
        log.info("%d new users from the event log (no demographics)", len(new_users))
    return RatingsDataset(ratings, dataset.items, users), event_seqs


def write_dataset(dataset: RatingsDataset, paths: ArtifactPaths, name: str, source_note: str) -> None:
    write_parquet(dataset.ratings, paths.ratings_path)
    write_parquet(dataset.items, paths.items_path)
    write_parquet(dataset.users, paths.users_path)
    has_demographics = all(c in dataset.users.columns for c in S.DEMOGRAPHIC_COLUMNS)
    write_metadata(
        paths.dataset_dir,
        "s0_fetch_data",
        outputs={
            "n_ratings": len(dataset.ratings),
            "n_items": len(dataset.items),
            "n_users": len(dataset.users),
            "has_demographics": has_demographics,
            "source": source_note,
        },
        dataset=name,
    )
    log.info("wrote %s, %s, %s (%s)", paths.ratings_path, paths.items_path, paths.users_path, source_note)


def download_dataset(source: DatasetSource, raw_root: Path, opener: UrlOpener = open_url) -> Path:
    """Download and unpack ``source`` under ``raw_root`` once; the zip's MD5 must match."""
    target = raw_root / source.name
    marker = target / ".verified"
    if marker.exists():
        return target
    url = GROUPLENS_URL.format(name=source.name)
    zip_path = raw_root / f"{source.name}.zip"
    raw_root.mkdir(parents=True, exist_ok=True)
    try:
        expected = source.md5 or _read_url(opener, url + ".md5").split()[0]
        _download(opener, url, zip_path)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"cannot download {url} ({exc}); without network pass --raw-dir (or RECSYS_RAW_DIR) "
            "pointing at a local copy, or use --dataset synthetic"
        ) from exc
    actual = _md5(zip_path)
    if actual != expected:
        zip_path.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}: expected md5 {expected}, got {actual}; retry the download")
    staging = raw_root / f".{source.name}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(staging)
    shutil.rmtree(target, ignore_errors=True)
    (staging / source.name).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    marker.write_text(expected + "\n")
    return target


def _read_url(opener: UrlOpener, url: str) -> str:
    with opener(url) as response:
        return response.read().decode()


def _download(opener: UrlOpener, url: str, path: Path) -> None:
    tmp = path.with_suffix(".part")
    with opener(url) as response, tmp.open("wb") as out:
        headers = getattr(response, "headers", None)
        total = int(headers.get("Content-Length") or 0) if headers is not None else 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    tmp.replace(path)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
