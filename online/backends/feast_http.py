"""The compose profile's feature store: Feast's feature server over HTTP (``POST /get-online-features``).

Item features are read for every item once per Feast data version and cached encoded (a version
shows in the rows' event timestamps: each publish materializes with a strictly later event time, see
``offline_to_online/rank/feast_publish.py``); the cheap version check reads one item. A request reads
its user's row with one call under its time budget; the encoded row is remembered (bounded), so when
the server is down the user gets the last row fetched for them, else the defaults of an unknown user.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.settings import Settings
from online.backends.base import Encoded, ReadyStatus
from online.backends.feature_tables import EncodedTable, RowEncoder
from online.backends.versions import Refreshing

USER_CACHE_SIZE = 100_000
LOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ItemFeatures:
    """``FeatureSnapshot`` of the feature server: the encoded items of one Feast version."""

    version: str
    items: EncodedTable
    unknown_user: Encoded
    spec: FeatureSpec

    def item_rows(self, items: np.ndarray) -> Encoded:
        return self.items.rows(items)

    def unknown_user_row(self) -> Encoded:
        return self.unknown_user


def columns_of(reply: dict[str, Any]) -> dict[str, list[Any]]:
    """``/get-online-features`` reply -> {feature name: values} (names are in no fixed order)."""
    names = reply["metadata"]["feature_names"]
    return {name: result["values"] for name, result in zip(names, reply["results"], strict=True)}


def event_time_of(reply: dict[str, Any]) -> str | None:
    """The newest event timestamp in a reply (its Feast data version's time)."""
    stamps = [t for result in reply["results"] for t in result.get("event_timestamps", []) if t]
    return max(stamps) if stamps else None


class FeastHttpFeatureStore:
    """``FeatureStore`` over the Feast feature server."""

    name = "feast-server"

    def __init__(self, settings: Settings) -> None:
        self.url = settings.feast_url.rstrip("/") + "/get-online-features"
        self.server = settings.feast_url  # the server this role calls (roles on one server fail together)
        self.spec = FeatureSpec.load(L.live_feature_spec_path(settings.paths.feature_repo_dir))
        self.user_encoder = RowEncoder(self.spec, "user")
        repo_data = settings.paths.feature_repo_dir / "data"
        self.item_ids = pd.read_parquet(repo_data / "item_features.parquet", columns=[S.ITEM_ID])[S.ITEM_ID].tolist()
        self._local = threading.local()
        self._users: OrderedDict[int, Encoded] = OrderedDict()
        self._users_lock = threading.Lock()
        self.items: Refreshing[ItemFeatures] = Refreshing("features", self._probe, self._load_items)

    def _post(self, service: str, key: str, ids: list[int], timeout_s: float) -> dict[str, Any]:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        body: dict[str, Any] = {"feature_service": service, "entities": {key: ids}, "full_feature_names": False}
        reply = session.post(self.url, json=body, timeout=timeout_s)
        reply.raise_for_status()
        return dict(reply.json())

    def _probe(self) -> str | None:
        if not self.item_ids:
            return None
        return event_time_of(self._post(L.ITEM_FEATURE_SERVICE, S.ITEM_ID, self.item_ids[:1], 5.0))

    def _load_items(self, version: str) -> ItemFeatures:
        reply = self._post(L.ITEM_FEATURE_SERVICE, S.ITEM_ID, self.item_ids, LOAD_TIMEOUT_S)
        frame = pd.DataFrame(columns_of(reply))
        items = EncodedTable.from_frame(self.spec, "item", frame, S.ITEM_ID)
        return ItemFeatures(version, items, self.user_encoder.encode({}), self.spec)

    def current(self) -> ItemFeatures:
        return self.items.get()

    def user_row(self, snapshot: Any, userid: int, timeout_s: float) -> Encoded:
        reply = self._post(L.USER_FEATURE_SERVICE, S.USER_ID, [userid], timeout_s)
        values = {name: column[0] for name, column in columns_of(reply).items()}
        row = self.user_encoder.encode(values)
        with self._users_lock:
            self._users[userid] = row
            self._users.move_to_end(userid)
            if len(self._users) > USER_CACHE_SIZE:
                self._users.popitem(last=False)
        return row

    def cached_user_row(self, snapshot: Any, userid: int) -> Encoded | None:
        with self._users_lock:
            return self._users.get(userid)

    def maybe_refresh(self) -> None:
        self.items.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.items]

    def status(self) -> ReadyStatus:
        try:
            version = self._probe()
        except Exception as exc:
            return ReadyStatus(False, self.name, self.items.version, f"{type(exc).__name__}: {str(exc)[:200]}")
        return ReadyStatus(self.items.loaded and version is not None, self.name, self.items.version)

    def close(self) -> None:
        pass
