"""The item catalog (title, year, genres) of the live item version, for responses a person can read.

It follows ``online/items/CURRENT`` like the in-process index and loads ``catalog.parquet`` from that
published version folder (``data_exchange_center.item_catalog``), checked against the version's
manifest; it never reads the offline files.
Titles are not needed to rank, so the catalog is not a role that ``/ready`` waits for: until it has
loaded, or when a published version has no catalog (published before catalogs existed), items carry
null titles and the probe keeps retrying.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_exchange_center import online_layout as L
from data_exchange_center.artifacts import ArtifactError, read_json, sha256_of
from data_exchange_center.item_catalog import CATALOG_FILE, ItemCatalog
from data_exchange_center.settings import Settings
from online.backends.base import NotLoaded, ReadyStatus
from online.backends.versions import Refreshing

EMPTY = ItemCatalog.empty()


def load_published_catalog(version_dir: Path, version: str) -> ItemCatalog:
    """The version's catalog, after checking it against the version's manifest (size and sha256)."""
    manifest = read_json(version_dir / L.MANIFEST_FILE)
    recorded = manifest.get("files", {}).get(CATALOG_FILE)
    if recorded is None:
        raise ArtifactError(f"item version {version} has no {CATALOG_FILE}: publish the items again")
    path = version_dir / CATALOG_FILE
    if not path.exists() or path.stat().st_size != recorded["bytes"] or sha256_of(path) != recorded["sha256"]:
        raise ArtifactError(f"{path} does not match {version_dir / L.MANIFEST_FILE}: publish again or roll back")
    return ItemCatalog.load(version_dir, version)


class ItemCatalogProvider:
    name = "item_catalog"

    def __init__(self, settings: Settings) -> None:
        store_dir = L.items_store_dir(settings.paths)
        self.snapshot: Refreshing[ItemCatalog] = Refreshing(
            "item_catalog",
            lambda: L.read_current_version(store_dir),
            lambda version: load_published_catalog(store_dir / version, version),
        )

    def current(self) -> ItemCatalog:
        """The live catalog, or an empty one (every item unknown) while none is loaded."""
        try:
            return self.snapshot.get()
        except NotLoaded:
            return EMPTY

    def maybe_refresh(self) -> None:
        self.snapshot.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.snapshot]

    def status(self) -> ReadyStatus:
        return ReadyStatus(self.snapshot.loaded, self.name, self.snapshot.version, str(self.snapshot.last_error or ""))

    def close(self) -> None:
        pass
