"""The compose profile's feature store: Feast's Redis online store, read in Feast's own layout.

Feast writes each entity as one Redis hash (Feast's ``docs/specs/online_store_format.md``): the key
is the serialized entity key followed by the project name, each feature is a field named by the
murmur3 hash of ``"<feature view>:<feature>"`` holding a serialized ``ValueProto``, and
``_ts:<feature view>`` holds the event time. This adapter builds keys and field names with Feast's
own functions and decodes values like Feast's own ``feast_value_type_to_python_type`` (which it calls
for every kind of value but the plain scalars, whose Python value is the protobuf field itself: a third
of its time on the ~105 values of a user row), so it serves exactly the values that
``get_online_features`` (and ``feast serve``) return, and tests compare the two on every entity.

Why not ``feast serve`` or the Feast SDK per request: one ``/get-online-features`` call for one user
took ~20 ms on an idle machine and up to 48 ms on a busy one (against the 50 ms backend budget: its
breaker opened under load), and the SDK's ``get_online_features`` builds protobuf responses and a
frame per call and uses a Redis client without a per-call timeout. One ``HMGET`` with this
request's own budget (``redis_calls``) plus decoding ~50 values is a fraction of a millisecond
(figures in ``online/README.md``).

Per published Feast version (the feature services' ``data_version`` tag, once materialized; the
cheap check is a ``stat`` of the registry file) a background thread reads the registry and every
item's row, encoded once; a request reads only its user's row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.settings import Settings
from online.backends.base import Encoded, ReadyStatus
from online.backends.feast_embedded import live_version, open_feature_store, registry_stamp
from online.backends.feature_tables import EncodedTable, RowEncoder
from online.backends.redis_calls import bounded_client, call, hmget
from online.backends.versions import Refreshing

log = logging.getLogger("recsys.online.features")
LOAD_TIMEOUT_S = 30.0
LOAD_BATCH = 1000  # items per pipelined HMGET batch while loading


@dataclass(frozen=True)
class FeastRedisView:
    """How one feature view's rows are laid out in Redis (from Feast's registry and config)."""

    join_key: str
    features: list[str]
    fields: list[bytes]  # murmur3 field names, aligned with ``features``
    entity_key: Callable[[int], bytes]  # entity id -> Redis key

    def decode(self, values: list[bytes | None]) -> dict[str, Any]:
        """HMGET reply (aligned with ``fields``) -> {feature: python value}; absent fields are missing.

        Each serialized ``ValueProto`` becomes what Feast's ``feast_value_type_to_python_type`` returns:
        that function for every kind but the plain scalars, whose Python value is the field itself."""
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        out: dict[str, Any] = {}
        for name, raw in zip(self.features, values, strict=True):
            if raw is None:
                continue
            proto = Value.FromString(raw)
            kind = proto.WhichOneof("val")
            if kind is None:
                out[name] = None
            else:
                out[name] = getattr(proto, kind) if kind in PLAIN_KINDS else feast_value_type_to_python_type(proto)
        return out


# ValueProto kinds whose Python value is the field itself in ``feast_value_type_to_python_type`` (no
# timestamp, JSON, list, set, map, UUID or decimal conversion)
PLAIN_KINDS = frozenset({"int32_val", "int64_val", "float_val", "double_val", "string_val", "bool_val", "bytes_val"})


def feast_redis_view(store: Any, view_name: str, join_key: str) -> FeastRedisView:
    """The layout of ``view_name`` from an open ``feast.FeatureStore`` (Feast's own key functions)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    view = store.get_feature_view(view_name, allow_registry_cache=False)
    project = store.config.project.encode()
    version = store.config.entity_key_serialization_version
    features = [f.name for f in view.features]

    def entity_key(entity_id: int) -> bytes:
        key = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(entity_id))])
        return bytes(serialize_entity_key(key, entity_key_serialization_version=version)) + project

    return FeastRedisView(join_key, features, [_mmh3(f"{view.name}:{name}") for name in features], entity_key)


@dataclass(frozen=True)
class FeastRedisSnapshot:
    """``FeatureSnapshot``: one Feast version's user layout and encoded item table."""

    version: str
    users: FeastRedisView
    user_encoder: RowEncoder
    items: EncodedTable
    spec: FeatureSpec

    def item_rows(self, items: np.ndarray) -> Encoded:
        return self.items.rows(items)

    def unknown_user_row(self) -> Encoded:
        return self.user_encoder.encode({})


def read_items(client: redis.Redis, view: FeastRedisView, ids: list[int]) -> pd.DataFrame:
    """Every item's row from Redis (pipelined HMGETs), decoded like Feast decodes it."""
    rows = []
    for start in range(0, len(ids), LOAD_BATCH):
        batch = ids[start : start + LOAD_BATCH]
        with client.pipeline(transaction=False) as pipe:
            for item in batch:
                pipe.hmget(view.entity_key(item), view.fields)  # type: ignore[arg-type]
            replies = pipe.execute()
        rows += [{view.join_key: item, **view.decode(reply)} for item, reply in zip(batch, replies, strict=True)]
    return pd.DataFrame(rows, columns=[view.join_key, *view.features])


class FeastRedisFeatureStore:
    """``FeatureStore`` over Feast's Redis online store (the Redis of ``redis_url``)."""

    name = "feast-redis"

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.repo_dir: Path = settings.paths.feature_repo_dir
        self.client = client or bounded_client(settings.redis_url, settings.backend_timeout_ms / 1000)
        self.server = settings.redis_url  # the server this role calls (roles on one server fail together)
        self.load_client = bounded_client(settings.redis_url, LOAD_TIMEOUT_S, pool_size=2)
        self.timeout_s = settings.backend_timeout_ms / 1000
        self.tables: Refreshing[FeastRedisSnapshot] = Refreshing(
            "features", lambda: registry_stamp(self.repo_dir), lambda _stamp: self._load()
        )

    def _load(self) -> FeastRedisSnapshot:
        store = open_feature_store(self.repo_dir)
        version = live_version(store)
        spec = FeatureSpec.load(L.feature_spec_of_version(self.repo_dir, version))
        users = feast_redis_view(store, L.USER_FEATURE_VIEW, S.USER_ID)
        items_view = feast_redis_view(store, L.ITEM_FEATURE_VIEW, S.ITEM_ID)
        ids_path = L.feature_version_dir(self.repo_dir, version) / "item_features.parquet"
        if not ids_path.exists():
            raise ArtifactError(f"missing {ids_path}: run offline_to_online/rank/s1_feature_to_feast.py")
        ids = pd.read_parquet(ids_path, columns=[S.ITEM_ID])[S.ITEM_ID].astype(int).tolist()
        items = EncodedTable.from_frame(spec, "item", read_items(self.load_client, items_view, ids), S.ITEM_ID)
        log.info("Feast version %s from Redis: %d items encoded", version, len(items.ids))
        return FeastRedisSnapshot(version, users, RowEncoder(spec, "user"), items, spec)

    def current(self) -> FeastRedisSnapshot:
        return self.tables.get()

    def user_row(self, snapshot: Any, userid: int, timeout_s: float) -> Encoded:
        view: FeastRedisView = snapshot.users
        values = hmget(self.client, timeout_s, view.entity_key(userid), view.fields)
        # Feast's reply carries the join key too (the spec may use the id as a feature)
        return snapshot.user_encoder.encode({view.join_key: userid, **view.decode(values)})  # type: ignore[no-any-return]

    def cached_user_row(self, snapshot: Any, userid: int) -> Encoded | None:
        return None  # the fallback store holds every published row

    def maybe_refresh(self) -> None:
        self.tables.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.tables]

    def status(self) -> ReadyStatus:
        try:
            call(self.client, max(self.timeout_s, 0.5), "PING")
        except redis.RedisError as exc:
            return ReadyStatus(False, self.name, self.tables.version, f"{type(exc).__name__}: {exc}")
        loaded = self.tables.loaded
        detail = "" if loaded else str(self.tables.last_error or "loading")
        return ReadyStatus(loaded, self.name, self.current().version if loaded else None, detail)

    def close(self) -> None:
        self.client.close()
        self.load_client.close()
