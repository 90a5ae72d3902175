"""The in-process item index (``data_exchange_center.item_index.ItemIndex``) of the live item version.

The embedded profile serves from it; the compose profile keeps it as the fallback for when
Elasticsearch is down. The version is ``online/items/CURRENT``; its manifest names the recall artifacts
that the index is loaded from. The chain parameters selected offline (``recall/chain_config.json``)
are loaded with it, so one item version always runs with the parameters it was evaluated with.
"""

from __future__ import annotations

import logging
from typing import Any

from data_exchange_center import online_layout as L
from data_exchange_center.artifacts import read_json
from data_exchange_center.chain import DEFAULT_MAX_TRIGGERS, ItemIndexLike, RankingPolicy
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import Settings
from online.backends.base import ChainParams, IndexSnapshot, ReadyStatus
from online.backends.versions import Refreshing

log = logging.getLogger("recsys.online.index")


def chain_quotas(settings: Settings) -> dict[str, int]:
    return {
        "i2i": settings.i2i_quota,
        "vector": settings.vector_quota,
        "term": settings.term_quota,
        "popularity": settings.popularity_quota,
    }


def load_chain_params(paths: ArtifactPaths, quotas: dict[str, int]) -> ChainParams:
    """``max_triggers`` and the ranking policy from ``recall/chain_config.json`` (defaults if absent)."""
    if not paths.chain_config_path.exists():
        log.warning("%s is missing: using max_triggers=%d and the default ranking policy",
                    paths.chain_config_path, DEFAULT_MAX_TRIGGERS)  # fmt: skip
        return ChainParams(quotas)
    raw = read_json(paths.chain_config_path)
    return ChainParams(quotas, int(raw.get("max_triggers", DEFAULT_MAX_TRIGGERS)), RankingPolicy.from_dict(raw))


def check_manifest(paths: ArtifactPaths, version: str) -> None:
    """Warn when a file changed size since it was published (a newer offline run not yet published)."""
    manifest_path = L.items_store_dir(paths) / version / L.MANIFEST_FILE
    if not manifest_path.exists():
        return
    for relative, recorded in read_json(manifest_path).get("files", {}).items():
        path = paths.data_dir / relative
        if path.exists() and path.stat().st_size != recorded.get("bytes"):
            log.warning("item version %s: %s changed since it was published; re-run offline_to_online", version, path)


def load_index_snapshot(paths: ArtifactPaths, quotas: dict[str, int], version: str) -> IndexSnapshot:
    check_manifest(paths, version)
    return IndexSnapshot(ItemIndex.load(paths), load_chain_params(paths, quotas), version)


class LocalItemIndex:
    """``ItemIndexProvider`` over the in-process exact index."""

    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        paths, quotas = settings.paths, chain_quotas(settings)
        store_dir = L.items_store_dir(paths)
        self.snapshot: Refreshing[IndexSnapshot] = Refreshing(
            "item_index",
            lambda: L.read_current_version(store_dir),
            lambda version: load_index_snapshot(paths, quotas, version),
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
