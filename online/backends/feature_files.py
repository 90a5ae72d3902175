"""The in-process fallback of a feature server: the Feast repository's own source files.

``offline_to_online/rank/s1_feature_to_feast.py`` keeps what each version published
(``feature_repo/versions/<version>/``: the spec and one row per entity of each feature view) and
materializes exactly those rows into the online store. Encoding them gives the values the online
store holds for that version, with no server (the live version is the registry's tag, read from the
registry file): when Feast's Redis (or ``feast serve``) is down or was
never reached, the chain reads its user and item rows here and names ``features`` in ``degraded``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.settings import Settings
from online.backends.base import Encoded, ReadyStatus
from online.backends.feast_embedded import FeatureTables, live_version, open_feature_store, registry_stamp
from online.backends.feature_tables import EncodedTable
from online.backends.versions import Refreshing


def load_source_tables(repo_dir: Path) -> FeatureTables:
    """The live Feast version's published tables (``versions/<version>/``), encoded with its spec."""
    version = live_version(open_feature_store(repo_dir))
    version_dir = L.feature_version_dir(repo_dir, version)
    spec = FeatureSpec.load(L.feature_spec_of_version(repo_dir, version))
    tables = {}
    for source, key in (("user", S.USER_ID), ("item", S.ITEM_ID)):
        path = version_dir / f"{source}_features.parquet"
        if not path.exists():
            raise ArtifactError(f"missing {path}: run offline_to_online/rank/s1_feature_to_feast.py")
        tables[source] = EncodedTable.from_frame(spec, source, pd.read_parquet(path), key)  # type: ignore[arg-type]
    return FeatureTables(version, tables["user"], tables["item"], spec)


class FeatureFilesStore:
    """``FeatureStore`` over the Feast repository's source files (in process, no server)."""

    name = "feast-files"

    def __init__(self, settings: Settings) -> None:
        repo_dir = settings.paths.feature_repo_dir
        self.tables: Refreshing[FeatureTables] = Refreshing(
            "features_fallback",
            lambda: registry_stamp(repo_dir),
            lambda _stamp: load_source_tables(repo_dir),
        )

    def current(self) -> FeatureTables:
        return self.tables.get()

    def user_row(self, snapshot: Any, userid: int, timeout_s: float) -> Encoded:
        return snapshot.user_row(userid)  # type: ignore[no-any-return]

    def cached_user_row(self, snapshot: Any, userid: int) -> Encoded | None:
        return snapshot.user_row(userid)  # type: ignore[no-any-return]

    def maybe_refresh(self) -> None:
        self.tables.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.tables]

    def status(self) -> ReadyStatus:
        loaded = self.tables.loaded
        return ReadyStatus(loaded, self.name, self.tables.version, "" if loaded else str(self.tables.last_error or ""))

    def close(self) -> None:
        pass
