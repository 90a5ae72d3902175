"""The in-process item index (``data_exchange_center.item_index.ItemIndex``) of the live item version.

The embedded profile serves from it; the compose profile keeps it as the fallback for when
Elasticsearch is down. The version is ``online/items/CURRENT``; the version folder holds everything
the index and the chain need (copies of the item artifacts and ``chain.json``, checked against the
manifest's checksums before loading), so one item version always runs with the parameters it was
published with, and the offline stages' working files are never read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_exchange_center import online_layout as L
from data_exchange_center.chain import ItemIndexLike, RankingPolicy, TriggerPolicy
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.settings import Settings
from online.backends.base import ChainParams, IndexSnapshot, ReadyStatus
from online.backends.versions import Refreshing

log = logging.getLogger("recsys.online.index")


def chain_params(chain: dict[str, int | float], quotas: dict[str, int]) -> ChainParams:
    """``ChainParams`` from published chain parameters (``online_layout.check_chain_parameters``)."""
    return ChainParams(quotas, TriggerPolicy.from_dict(dict(chain)), RankingPolicy.from_dict(dict(chain)))


def load_index_snapshot(store_dir: Path, quotas: dict[str, int], version: str) -> IndexSnapshot:
    """Load one published item version (after checking its files against the manifest)."""
    version_dir = store_dir / version
    L.verify_version_files(version_dir)
    index = ItemIndex.from_files(L.ItemFiles.in_version(version_dir))
    return IndexSnapshot(index, chain_params(L.read_chain_file(version_dir), quotas), version)


class LocalItemIndex:
    """``ItemIndexProvider`` over the in-process exact index."""

    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        quotas = settings.chain_quotas
        store_dir = L.items_store_dir(settings.paths)
        self.snapshot: Refreshing[IndexSnapshot] = Refreshing(
            "item_index",
            lambda: L.read_current_version(store_dir),
            lambda version: load_index_snapshot(store_dir, quotas, version),
        )

    def current(self) -> IndexSnapshot:
        return self.snapshot.get()

    def bind(self, snapshot: IndexSnapshot, timeout_s: float) -> ItemIndexLike:
        return snapshot.index  # in process: nothing to bound

    def maybe_refresh(self) -> None:
        self.snapshot.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.snapshot]

    def status(self) -> ReadyStatus:
        loaded = self.snapshot.loaded
        detail = "" if loaded else str(self.snapshot.last_error or "")
        return ReadyStatus(loaded, self.name, self.snapshot.version, detail)

    def close(self) -> None:
        pass
