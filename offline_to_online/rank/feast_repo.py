"""Generate the Feast feature repository from the feature specification (pure text and tables).

The repository (``paths.feature_repo_dir``) holds:

- ``feature_store.yaml``: project, a file registry (``data/registry.db``), the online store (SQLite
  ``data/online_store.db`` for the embedded profile, Redis for compose), the file offline store;
- ``features.py``: the entities ``user`` (join key ``userid``) and ``item`` (``itemid``), one feature
  view per source over a Parquet file, and the feature services ``user_features`` / ``item_features``;
- ``data/user_features.parquet``, ``data/item_features.parquet``: the rank artifacts' columns that the
  spec takes from each source (the join key is the entity, not a feature), plus ``event_timestamp``.

Feature types follow the artifact's column dtypes: integers as ``Int64``, float32 as ``Float32``,
float64 as ``Float64``, strings as ``String``, booleans as ``Bool``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import yaml

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import FeatureSpec, Source

REGISTRY_PATH = "data/registry.db"
SQLITE_PATH = "data/online_store.db"
DATA_DIR = "data"
DEFINITIONS_FILE = "features.py"
YAML_FILE = "feature_store.yaml"
PASSWORD_ENV = "RECSYS_FEAST_REDIS_PASSWORD"  # the feature server's Redis password, never written to the file
ENTITY_KEY_SERIALIZATION_VERSION = 3


@dataclass(frozen=True)
class SourceView:
    """One entity's feature view: its names and ordered ``(feature, feast type)`` schema."""

    source: Source
    entity: str
    join_key: str
    view: str
    service: str
    features: list[tuple[str, str]]

    @property
    def file_name(self) -> str:
        return f"{self.source}_features.parquet"

    @property
    def path(self) -> str:
        return f"{DATA_DIR}/{self.file_name}"


def feast_type(dtype: Any, column: str) -> str:
    """The Feast type name of a pandas dtype."""
    if pd.api.types.is_bool_dtype(dtype):
        return "Bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "Int64"
    if pd.api.types.is_float_dtype(dtype):
        return "Float32" if np.dtype(dtype) == np.float32 else "Float64"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        return "String"
    raise ArtifactError(f"feature column {column!r} has dtype {dtype}, which has no Feast type here")


def source_view(spec: FeatureSpec, source: Source, table: pd.DataFrame) -> SourceView:
    """The view of ``source``; refuses a table that lacks a spec column or has duplicate ids."""
    join_key = S.USER_ID if source == "user" else S.ITEM_ID
    missing = [c for c in [join_key, *spec.source_columns(source)] if c not in table.columns]
    if missing:
        raise ArtifactError(f"rank/{source}_features.parquet lacks {missing} required by the feature spec")
    if table[join_key].duplicated().any():
        raise ArtifactError(f"rank/{source}_features.parquet has duplicate {join_key} values")
    columns = [c for c in spec.source_columns(source) if c != join_key]
    features = [(c, feast_type(table[c].dtype, c)) for c in columns]
    if source == "user":
        return SourceView(source, L.USER_ENTITY, join_key, L.USER_FEATURE_VIEW, L.USER_FEATURE_SERVICE, features)
    return SourceView(source, L.ITEM_ENTITY, join_key, L.ITEM_FEATURE_VIEW, L.ITEM_FEATURE_SERVICE, features)


def source_table(view: SourceView, table: pd.DataFrame, event_time: datetime) -> pd.DataFrame:
    """The view's Parquet source: join key, features (integers as int64), ``event_timestamp``."""
    out = table[[view.join_key, *(name for name, _ in view.features)]].copy()
    for name, kind in [(view.join_key, "Int64"), *view.features]:
        if kind == "Int64":
            out[name] = out[name].astype(np.int64)
    out[L.EVENT_TIMESTAMP] = pd.Timestamp(event_time).tz_convert("UTC")
    return out.reset_index(drop=True)


def redis_connection_string(url: str, password_placeholder: bool) -> str:
    """``redis://:pw@host:6379/2`` -> ``host:6379,db=2,password=...`` (Feast's Redis format)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    db = (parsed.path or "/0").lstrip("/") or "0"
    parts = [f"{parsed.hostname}:{parsed.port or 6379}", f"db={int(db)}"]
    if parsed.password:
        parts.append(
            f"password=${{{PASSWORD_ENV}}}" if password_placeholder else f"password={unquote(parsed.password)}"
        )
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def store_config(project: str, redis_url: str | None, password_placeholder: bool = True) -> dict[str, Any]:
    """``feature_store.yaml`` as a dict: SQLite online store without ``redis_url``, Redis with it."""
    online: dict[str, Any] = {"type": "sqlite", "path": SQLITE_PATH}
    if redis_url is not None:
        online = {"type": "redis", "connection_string": redis_connection_string(redis_url, password_placeholder)}
    return {
        "project": project,
        "provider": "local",
        "registry": {"registry_type": "file", "path": REGISTRY_PATH, "cache_ttl_seconds": 60},
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": ENTITY_KEY_SERIALIZATION_VERSION,
    }


def store_yaml(config: dict[str, Any]) -> str:
    header = "# Generated by offline_to_online/rank/s1_feature_to_feast.py; do not edit.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def definitions_py(views: list[SourceView], version: str, spec_dataset: str) -> str:
    """The text of ``features.py``: Feast objects only, importable by ``feast apply`` as well."""
    types = sorted({kind for view in views for _, kind in view.features} | {"Int64"})
    lines = [
        '"""Feast definitions generated by offline_to_online/rank/s1_feature_to_feast.py; do not edit.',
        "",
        f"Dataset {spec_dataset}, data version {version}. Source: rank/feature_spec.json.",
        '"""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        f"from feast.types import {', '.join(types)}",
        "",
        f'DATA_VERSION = "{version}"',
    ]
    for view in views:
        lines += _view_lines(view)
    return "\n".join(lines) + "\n"


def _view_lines(view: SourceView) -> list[str]:
    fields = [f'        Field(name="{name}", dtype={kind}),' for name, kind in view.features]
    return [
        "",
        f'{view.entity} = Entity(name="{view.entity}", join_keys=["{view.join_key}"], value_type=ValueType.INT64)',
        f"{view.entity}_source = FileSource(",
        f'    name="{view.source}_features_source", path="{view.path}", timestamp_field="{L.EVENT_TIMESTAMP}"',
        ")",
        f"{view.view} = FeatureView(",
        f'    name="{view.view}",',
        f"    entities=[{view.entity}],",
        "    ttl=timedelta(0),",
        "    schema=[",
        *fields,
        "    ],",
        f"    source={view.entity}_source,",
        "    online=True,",
        f'    tags={{"{L.DATA_VERSION_TAG}": DATA_VERSION}},',
        ")",
        f"{view.service} = FeatureService(",
        f'    name="{view.service}", features=[{view.view}], tags={{"{L.DATA_VERSION_TAG}": DATA_VERSION}}',
        ")",
    ]
