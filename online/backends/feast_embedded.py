"""The embedded feature store: Feast's SDK on the generated repository's SQLite online store.

Per published Feast version (the feature services' ``data_version`` tag, once its materialization has
finished) every user and item row is read through ``FeatureStore.get_online_features`` and encoded
once into in-memory tables; a request then reads its user row and the candidates' item rows with
binary searches.

Why not one Feast call per request: ``get_online_features`` for one user took 0.3-0.5 ms here on the
tiny repository and ~1 ms on ML-1M (SQLite read, protobuf decoding, a pandas frame to encode), which
is a large share of a 2-3 ms request at 400 req/s on two cores, and importing Feast takes ~8 s.
Reading the whole version through Feast at switch time serves exactly the values Feast holds, costs
the request path nothing, and keeps Feast out of request threads. The cost is memory (ML-1M: 6,040 users
and 3,706 items, about 2 MB encoded); a catalogue too large for that belongs on the compose profile's
feature server.

The cheap version check is a ``stat`` of the registry file; only when it changed does a background
thread open the registry and compare the tag and the materialized interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import FeatureSpec, Source
from data_exchange_center.settings import Settings
from online.backends.base import Encoded, ReadyStatus
from online.backends.feature_tables import EncodedTable
from online.backends.versions import Refreshing

log = logging.getLogger("recsys.online.features")
REGISTRY_FILE = Path("data") / "registry.db"
READ_BATCH = 5000  # entity rows per get_online_features call while loading


@dataclass(frozen=True)
class FeatureTables:
    """``FeatureSnapshot``: the encoded user and item tables of one Feast version."""

    version: str
    users: EncodedTable
    items: EncodedTable
    spec: FeatureSpec  # the version's feature spec

    def item_rows(self, items: np.ndarray) -> Encoded:
        return self.items.rows(items)

    def user_row(self, userid: int) -> Encoded:
        row = self.users.row(userid)
        return self.users.default if row is None else row

    def unknown_user_row(self) -> Encoded:
        return self.users.default


def version_time(version: str) -> datetime:
    return datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def open_feature_store(repo_dir: Path) -> Any:
    from feast import FeatureStore  # about 8 s to import: only ever in a loading thread

    if not (repo_dir / "feature_store.yaml").exists():
        raise ArtifactError(f"no Feast repository at {repo_dir}: run offline_to_online/rank/s1_feature_to_feast.py")
    return FeatureStore(repo_path=str(repo_dir))


def live_version(store: Any) -> str:
    """The data version of both feature services, once Feast has materialized it."""
    versions = set()
    for service_name, view_name in ((L.USER_FEATURE_SERVICE, L.USER_FEATURE_VIEW),
                                    (L.ITEM_FEATURE_SERVICE, L.ITEM_FEATURE_VIEW)):  # fmt: skip
        service = store.get_feature_service(service_name, allow_cache=False)
        version = service.tags.get(L.DATA_VERSION_TAG)
        if not version:
            raise ArtifactError(f"Feast feature service {service_name} has no {L.DATA_VERSION_TAG} tag")
        view = store.get_feature_view(view_name, allow_registry_cache=False)
        materialized_to = max((end for _, end in view.materialization_intervals), default=None)
        if materialized_to is None or materialized_to <= version_time(version):
            raise ArtifactError(f"Feast version {version}: {view_name} is not materialized yet")
        versions.add(version)
    if len(versions) != 1:
        raise ArtifactError(f"Feast feature services carry different data versions {sorted(versions)}")
    return versions.pop()


def read_source(store: Any, repo_dir: Path, source: Source) -> pd.DataFrame:
    """Every entity of ``source`` through its feature service (ids from the view's source file)."""
    key = S.USER_ID if source == "user" else S.ITEM_ID
    service_name = L.USER_FEATURE_SERVICE if source == "user" else L.ITEM_FEATURE_SERVICE
    ids = pd.read_parquet(repo_dir / "data" / f"{source}_features.parquet", columns=[key])[key].tolist()
    service = store.get_feature_service(service_name)
    parts = []
    for start in range(0, len(ids), READ_BATCH):
        rows = [{key: int(i)} for i in ids[start : start + READ_BATCH]]
        parts.append(pd.DataFrame(store.get_online_features(features=service, entity_rows=rows).to_dict()))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({key: []})


def load_feature_tables(repo_dir: Path) -> FeatureTables:
    """Every user and item row of the live Feast version, encoded with that version's published spec."""
    store = open_feature_store(repo_dir)
    version = live_version(store)
    spec = FeatureSpec.load(L.feature_spec_of_version(repo_dir, version))
    users = EncodedTable.from_frame(spec, "user", read_source(store, repo_dir, "user"), S.USER_ID)
    items = EncodedTable.from_frame(spec, "item", read_source(store, repo_dir, "item"), S.ITEM_ID)
    if live_version(store) != version:
        raise ArtifactError(f"Feast version changed from {version} while it was read; reading again")
    log.info("Feast version %s: %d users, %d items encoded", version, len(users.ids), len(items.ids))
    return FeatureTables(version, users, items, spec)


def registry_stamp(repo_dir: Path) -> str | None:
    """A cheap token that changes whenever the registry file is rewritten (apply, materialize)."""
    try:
        stat = (repo_dir / REGISTRY_FILE).stat()
    except FileNotFoundError:
        return None
    return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"  # a publish renames a new file into place


class EmbeddedFeatureStore:
    """``FeatureStore`` over Feast's SDK (SQLite online store), cached per Feast version."""

    name = "feast-sqlite"

    def __init__(self, settings: Settings) -> None:
        repo_dir = settings.paths.feature_repo_dir
        self.tables: Refreshing[FeatureTables] = Refreshing(
            "features", lambda: registry_stamp(repo_dir), lambda _stamp: load_feature_tables(repo_dir)
        )

    def current(self) -> FeatureTables:
        return self.tables.get()

    def user_row(self, snapshot: Any, userid: int, timeout_s: float) -> Encoded:
        return snapshot.user_row(userid)

    def cached_user_row(self, snapshot: Any, userid: int) -> Encoded | None:
        return snapshot.user_row(userid)

    def maybe_refresh(self) -> None:
        self.tables.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.tables]

    def status(self) -> ReadyStatus:
        loaded = self.tables.loaded
        version = self.current().version if loaded else None
        return ReadyStatus(loaded, self.name, version, "" if loaded else str(self.tables.last_error or ""))

    def close(self) -> None:
        pass
