"""Readers of the MovieLens layouts into three normalized tables (ratings, items, users).

Ids are kept as the dataset gives them (no densifying, no assumed maximum). Ratings keep file order,
which is the tie-breaker of the time-ordered split. Demographics exist only where the dataset has
them (ML-1M, ML-100K); the CSV family has none and gets a ``users`` table with ids only.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from offline.common.stage import DataError

log = logging.getLogger(__name__)

LAYOUT_DAT = "dat"  # ML-1M: ratings.dat / movies.dat / users.dat, '::' separated
LAYOUT_100K = "100k"  # ML-100K: u.data / u.item / u.user
LAYOUT_CSV = "csv"  # ml-latest-small, ml-25m, ml-32m: ratings.csv / movies.csv

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True)
class RatingsDataset:
    ratings: pd.DataFrame  # userid int64, itemid int64, rating float32, timestamp int64 (file order)
    items: pd.DataFrame  # itemid int64, title str, genres list[str]
    users: pd.DataFrame  # userid int64 [+ gender str, age int64, occupation int64]


def read_dataset(raw_dir: Path, layout: str) -> RatingsDataset:
    """Read a MovieLens copy in ``layout`` from ``raw_dir`` and check its referential integrity."""
    readers = {LAYOUT_DAT: _read_dat, LAYOUT_100K: _read_100k, LAYOUT_CSV: _read_csv_family}
    if layout not in readers:
        raise DataError(f"unknown layout {layout!r}; expected one of {sorted(readers)}")
    dataset = readers[layout](raw_dir)
    _check_dataset(dataset, raw_dir)
    log.info(
        "read %d ratings, %d items, %d users from %s",
        len(dataset.ratings),
        len(dataset.items),
        len(dataset.users),
        raw_dir,
    )
    return dataset


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"missing raw file {path}: check --raw-dir / RECSYS_RAW_DIR or fetch the dataset")
    return path


def _read_table(path: Path, sep: str, n_fields: int, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a separated text file of exactly ``n_fields`` string fields, naming the first bad line."""
    text = _require(path).read_text(encoding=encoding)
    lines = text.splitlines()
    rows = [line.split(sep) for line in lines]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(lengths != n_fields)
    if len(bad):
        line_no = int(bad[0]) + 1
        raise DataError(
            f"{path}:{line_no}: malformed line (expected {n_fields} fields separated by {sep!r}, "
            f"got {lengths[bad[0]]}): {lines[bad[0]][:80]!r}"
        )
    return pd.DataFrame(rows, dtype=str)


def _to_int(frame: pd.DataFrame, column: int | str, path: Path, first_line: int = 1) -> pd.Series:
    """Integer column; a non-numeric value is a ``DataError`` naming file and line."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if len(bad):
        raise DataError(f"{path}:{int(bad[0]) + first_line}: expected a number, got {frame[column].iloc[bad[0]]!r}")
    return values


def _read_ratings_fast(path: Path, sep: str, header: bool) -> pd.DataFrame:
    """Four numeric columns (user, item, rating, timestamp) with the C parser; bad lines named.

    Numbers are parsed straight into numeric columns (memory: 8 bytes a value, ML-32M in about 1 GiB);
    only when that fails is the file read again as text, to name the first bad line."""
    _require(path)
    try:
        return _read_ratings_numeric(path, sep, header)
    except (pd.errors.ParserError, ValueError, TypeError):
        pass  # a malformed file: the text reader below says where
    try:
        if sep == "::":
            # '::' splits into empty columns with the fast C parser: fields sit at 0, 2, 4, 6.
            raw = pd.read_csv(path, sep=":", header=None, usecols=[0, 2, 4, 6], dtype=str, engine="c")
            raw.columns = [0, 1, 2, 3]
        else:
            raw = pd.read_csv(path, sep=sep, header=0 if header else None, usecols=[0, 1, 2, 3], dtype=str)
            raw.columns = [0, 1, 2, 3]
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: malformed ratings file: {exc}") from exc
    first_line = 2 if header else 1
    missing = raw.isna().any(axis=1).to_numpy()
    if missing.any():
        raise DataError(f"{path}:{int(np.argmax(missing)) + first_line}: malformed line (missing fields)")
    ratings = pd.DataFrame(
        {
            S.USER_ID: _to_int(raw, 0, path, first_line).astype(np.int64),
            S.ITEM_ID: _to_int(raw, 1, path, first_line).astype(np.int64),
            S.RATING: _to_int(raw, 2, path, first_line).astype(np.float32),
            S.TIMESTAMP: _to_int(raw, 3, path, first_line).astype(np.int64),
        }
    )
    return ratings


def _read_ratings_numeric(path: Path, sep: str, header: bool) -> pd.DataFrame:
    positions = [0, 2, 4, 6] if sep == "::" else [0, 1, 2, 3]
    dtypes = dict(zip(positions, (np.int64, np.int64, np.float64, np.int64), strict=True))
    raw = pd.read_csv(
        path, sep=":" if sep == "::" else sep, header=None, skiprows=1 if header else 0,
        usecols=positions, dtype=dtypes, engine="c",
    )  # fmt: skip
    if raw.isna().to_numpy().any():
        raise ValueError("missing fields")
    return pd.DataFrame(
        {
            S.USER_ID: raw[positions[0]].to_numpy(),
            S.ITEM_ID: raw[positions[1]].to_numpy(),
            S.RATING: raw[positions[2]].to_numpy().astype(np.float32),
            S.TIMESTAMP: raw[positions[3]].to_numpy(),
        }
    )


def _split_genres(genres: pd.Series) -> pd.Series:
    return genres.map(lambda g: [x for x in g.split("|") if x and x != "(no genres listed)"])


def _read_dat(raw_dir: Path) -> RatingsDataset:
    ratings = _read_ratings_fast(raw_dir / "ratings.dat", "::", header=False)
    movies_path = raw_dir / "movies.dat"
    movies = _read_table(movies_path, "::", 3, encoding="latin-1")
    items = pd.DataFrame(
        {
            S.ITEM_ID: _to_int(movies, 0, movies_path).astype(np.int64),
            S.TITLE: movies[1],
            S.GENRES: _split_genres(movies[2]),
        }
    )
    users_path = raw_dir / "users.dat"
    raw_users = _read_table(users_path, "::", 5)
    users = pd.DataFrame(
        {
            S.USER_ID: _to_int(raw_users, 0, users_path).astype(np.int64),
            S.GENDER: raw_users[1],
            S.AGE: _to_int(raw_users, 2, users_path).astype(np.int64),
            S.OCCUPATION: _to_int(raw_users, 3, users_path).astype(np.int64),
        }
    )
    return RatingsDataset(ratings, items, users)


def _read_100k(raw_dir: Path) -> RatingsDataset:
    ratings = _read_ratings_fast(raw_dir / "u.data", "\t", header=False)
    item_path = raw_dir / "u.item"
    raw_items = _read_table(item_path, "|", 5 + len(ML100K_GENRES), encoding="latin-1")
    flags = raw_items.iloc[:, 5:].to_numpy() == "1"
    genre_names = np.array(ML100K_GENRES, dtype=object)
    items = pd.DataFrame(
        {
            S.ITEM_ID: _to_int(raw_items, 0, item_path).astype(np.int64),
            S.TITLE: raw_items[1],
            S.GENRES: [list(genre_names[row]) for row in flags],
        }
    )
    user_path = raw_dir / "u.user"
    raw_users = _read_table(user_path, "|", 5)
    users = pd.DataFrame(
        {
            S.USER_ID: _to_int(raw_users, 0, user_path).astype(np.int64),
            S.GENDER: raw_users[2],
            S.AGE: _to_int(raw_users, 1, user_path).astype(np.int64),
            S.OCCUPATION: raw_users[3],
        }
    )
    return RatingsDataset(ratings, items, users)


def _read_csv_family(raw_dir: Path) -> RatingsDataset:
    ratings = _read_ratings_fast(raw_dir / "ratings.csv", ",", header=True)
    movies_path = _require(raw_dir / "movies.csv")
    with movies_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    if header[:3] != ["movieId", "title", "genres"]:
        raise DataError(f"{movies_path}:1: expected header movieId,title,genres, got {header}")
    bad = [i for i, r in enumerate(body) if len(r) != 3]
    if bad:
        raise DataError(f"{movies_path}:{bad[0] + 2}: malformed line (expected 3 fields)")
    movies = pd.DataFrame(body, dtype=str)
    items = pd.DataFrame(
        {
            S.ITEM_ID: _to_int(movies, 0, movies_path, first_line=2).astype(np.int64),
            S.TITLE: movies[1],
            S.GENRES: _split_genres(movies[2]),
        }
    )
    users = pd.DataFrame({S.USER_ID: np.unique(ratings[S.USER_ID].to_numpy())})
    return RatingsDataset(ratings, items, users)


def _check_dataset(dataset: RatingsDataset, raw_dir: Path) -> None:
    if dataset.ratings.empty:
        raise DataError(f"no ratings in {raw_dir}")
    unknown_items = ~dataset.ratings[S.ITEM_ID].isin(dataset.items[S.ITEM_ID])
    if unknown_items.any():
        example = int(dataset.ratings[S.ITEM_ID][unknown_items].iloc[0])
        raise DataError(
            f"{raw_dir}: {int(unknown_items.sum())} ratings name items not in the item file, e.g. {example}"
        )
    unknown_users = ~dataset.ratings[S.USER_ID].isin(dataset.users[S.USER_ID])
    if unknown_users.any():
        example = int(dataset.ratings[S.USER_ID][unknown_users].iloc[0])
        raise DataError(
            f"{raw_dir}: {int(unknown_users.sum())} ratings name users not in the user file, e.g. {example}"
        )
    if dataset.items[S.ITEM_ID].duplicated().any():
        raise DataError(f"{raw_dir}: duplicate item ids in the item file")
    if dataset.users[S.USER_ID].duplicated().any():
        raise DataError(f"{raw_dir}: duplicate user ids in the user file")
