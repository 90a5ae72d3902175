"""The item catalog: what a person reads about an item (title, year, genres), published with each item version.

The item publish stage writes ``online/items/<version>/catalog.parquet`` from the dataset's items
(``dataset/items.parquet``) and the popularity artifact; the service reads it from the published
version only (never from the offline files), so titles change with a publish, like everything else.

``catalog.parquet``: ``itemid`` int64 (sorted, unique), ``title`` string (the dataset title without
its trailing ``" (1995)"``), ``year`` Int64 (null when the title carries none), ``genres``
list<string>, ``popularity`` float32 (positive offline impressions; orders title searches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_parquet, write_parquet
from data_exchange_center.paths import ArtifactPaths

CATALOG_FILE = "catalog.parquet"
YEAR = "year"
POPULARITY = "popularity"
CATALOG_COLUMNS = (S.ITEM_ID, S.TITLE, YEAR, S.GENRES, POPULARITY)
ITEM_FIELDS = (S.TITLE, YEAR, S.GENRES)  # what a response may carry per item ("fields")
_YEAR_SUFFIX = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:[-–]\d{0,4})?\)\s*$")


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Toy Story (1995)"`` -> (``"Toy Story"``, 1995); a title without a year keeps its text, year null."""
    parts = titles.astype("string").str.extract(_YEAR_SUFFIX)
    title = parts["title"].fillna(titles.astype("string")).str.strip()
    year = pd.to_numeric(parts["year"], errors="coerce").astype("Int64")
    return title, year


def build_catalog(items: pd.DataFrame, popularity: pd.DataFrame | None = None) -> pd.DataFrame:
    """The catalog table from the dataset's items (itemid, title, genres) and optional popularity (itemid, score)."""
    title, year = split_title_year(items[S.TITLE])
    catalog = pd.DataFrame(
        {
            S.ITEM_ID: items[S.ITEM_ID].astype(np.int64).to_numpy(),
            S.TITLE: title.to_numpy(dtype=object),
            YEAR: year.array,
            S.GENRES: [list(g) if g is not None else [] for g in items[S.GENRES]],
        }
    )
    score = pd.Series(0.0, index=catalog[S.ITEM_ID])
    if popularity is not None and len(popularity):
        score = popularity.set_index(S.ITEM_ID)[S.SCORE].reindex(catalog[S.ITEM_ID], fill_value=0.0)
    catalog[POPULARITY] = score.to_numpy(np.float32)
    catalog = catalog.drop_duplicates(S.ITEM_ID).sort_values(S.ITEM_ID, kind="stable").reset_index(drop=True)
    return catalog


def catalog_from_artifacts(paths: ArtifactPaths) -> pd.DataFrame:
    """The catalog of the current offline run: ``dataset/items.parquet`` and ``recall/popularity.parquet``."""
    items = read_parquet(paths.items_path, (S.ITEM_ID, S.TITLE, S.GENRES))
    popularity = read_parquet(paths.popularity_path, (S.ITEM_ID, S.SCORE)) if paths.popularity_path.exists() else None
    return build_catalog(items, popularity)


def write_catalog(catalog: pd.DataFrame, version_dir: Path) -> Path:
    return write_parquet(catalog.loc[:, list(CATALOG_COLUMNS)], version_dir / CATALOG_FILE)


@dataclass(frozen=True)
class ItemCatalog:
    """The catalog of one item version, for look-ups by id and searches by title."""

    item_ids: np.ndarray  # (n,) int64, sorted
    titles: np.ndarray  # (n,) object str
    years: np.ndarray  # (n,) object int | None
    genres: list[list[str]]
    popularity: np.ndarray  # (n,) float32
    folded_titles: np.ndarray  # (n,) str: casefolded titles, for searches
    version: str | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, version: str | None = None) -> ItemCatalog:
        frame = frame.sort_values(S.ITEM_ID, kind="stable")
        years = frame[YEAR].astype("Int64")
        return cls(
            item_ids=frame[S.ITEM_ID].to_numpy(np.int64),
            titles=frame[S.TITLE].astype(str).to_numpy(dtype=object),
            years=np.array([None if pd.isna(y) else int(y) for y in years], dtype=object),
            genres=[[str(g) for g in gs] for gs in frame[S.GENRES]],
            popularity=frame[POPULARITY].to_numpy(np.float32),
            folded_titles=np.array([t.casefold() for t in frame[S.TITLE].astype(str)], dtype=str),
            version=version,
        )

    @classmethod
    def load(cls, version_dir: Path, version: str | None = None) -> ItemCatalog:
        path = version_dir / CATALOG_FILE
        if not path.exists():
            raise ArtifactError(f"{path} is missing: publish the items again (offline_to_online s2_item_to_es)")
        return cls.from_frame(read_parquet(path, CATALOG_COLUMNS), version)

    @classmethod
    def empty(cls) -> ItemCatalog:
        return cls.from_frame(pd.DataFrame({c: [] for c in CATALOG_COLUMNS}).astype({S.ITEM_ID: np.int64}))

    def __len__(self) -> int:
        return len(self.item_ids)

    def positions(self, items: np.ndarray) -> np.ndarray:
        """Row of each item in the catalog, -1 where unknown; (n,) int64."""
        items = np.asarray(items, dtype=np.int64)
        if not len(self.item_ids):
            return np.full(len(items), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.item_ids, items), len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == items, pos, -1)

    def describe(self, items: np.ndarray, fields: tuple[str, ...] = ITEM_FIELDS) -> list[dict[str, Any]]:
        """Per item, the requested fields (null when the catalog does not know the item)."""
        out = []
        for pos in self.positions(items).tolist():
            known = pos >= 0
            entry: dict[str, Any] = {}
            if S.TITLE in fields:
                entry[S.TITLE] = self.titles[pos] if known else None
            if YEAR in fields:
                entry[YEAR] = self.years[pos] if known else None
            if S.GENRES in fields:
                entry[S.GENRES] = list(self.genres[pos]) if known else []
            out.append(entry)
        return out

    def genres_of_items(self, items: np.ndarray) -> list[list[str]]:
        """Each item's genres ([] when the catalog does not know it)."""
        return [list(self.genres[pos]) if pos >= 0 else [] for pos in self.positions(items).tolist()]

    def genres_of(self, item: int) -> list[str]:
        pos = int(self.positions(np.array([item]))[0])
        return list(self.genres[pos]) if pos >= 0 else []

    def search(self, query: str, k: int) -> np.ndarray:
        """Items whose title contains ``query`` (case-insensitive), most popular first; all items when empty."""
        query = query.strip().casefold()
        hit = np.char.find(self.folded_titles, query) >= 0 if query and len(self) else np.ones(len(self), bool)
        items, popularity = self.item_ids[hit], self.popularity[hit]
        order = np.lexsort((items, -popularity))[:k]
        return items[order]
