"""The name-to-class table of backends: which adapter serves each role, and the fallback of each.

Each role (``data_exchange_center.settings.ROLES``) is set on its own (``RECSYS_INDEX_BACKEND=local``,
...); a profile is a preset of the four (``settings.PRESETS``). Entries are ``"module:Class"`` strings
imported on use, so the embedded profile never imports the service clients (redis, elasticsearch,
tritonclient) and the compose profile only what it uses. Every class takes the ``Settings``.

A role served by a server gets an in-process fallback over the published artifacts (``FALLBACKS``);
the profile store has none: an unreachable store means the unknown-user state (popularity).
"""

from __future__ import annotations

import importlib
from typing import Any

from data_exchange_center.settings import ROLES, Settings
from online.backends.user_tower import UserTowers
from online.service.recommender import Backends

ADAPTERS: dict[str, dict[str, str]] = {
    "profiles": {
        "local": "online.backends.embedded_profiles:EmbeddedProfileStore",
        "redis": "online.backends.redis_profiles:RedisProfileStore",
    },
    "index": {
        "local": "online.backends.local_index:LocalItemIndex",
        "elasticsearch": "online.backends.es_index:EsItemIndex",
    },
    "features": {
        "local": "online.backends.feast_embedded:EmbeddedFeatureStore",
        "feast-redis": "online.backends.feast_redis:FeastRedisFeatureStore",
        "feast-server": "online.backends.feast_http:FeastHttpFeatureStore",
    },
    "scorer": {
        "local": "online.backends.onnx_scorer:OnnxScorer",
        "triton": "online.backends.triton_scorer:TritonScorer",
    },
}
FALLBACKS: dict[str, str] = {
    "index": "online.backends.local_index:LocalItemIndex",
    "features": "online.backends.feature_files:FeatureFilesStore",
    "scorer": "online.backends.onnx_scorer:OnnxScorer",
}


def backend_class(path: str) -> Any:
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def adapter_path(role: str, name: str) -> str:
    try:
        return ADAPTERS[role][name]
    except KeyError:
        raise ValueError(f"no {role} backend named {name!r}; known: {sorted(ADAPTERS[role])}") from None


def build_backends(settings: Settings, overrides: dict[str, Any] | None = None) -> Backends:
    """Each role's adapter and, for a server-backed role, its in-process fallback.

    ``overrides`` maps a role to a ready-made adapter (tests, tools); an overridden role keeps the
    fallback of its configured backend."""
    overrides = overrides or {}
    made: dict[str, Any] = {}
    fallbacks: dict[str, Any] = {}
    for role in ROLES:
        name = settings.backend_of(role)
        made[role] = overrides.get(role) or backend_class(adapter_path(role, name))(settings)
        if name != "local" and role in FALLBACKS:
            fallbacks[role] = backend_class(FALLBACKS[role])(settings)
    return Backends(
        made["profiles"],
        made["index"],
        made["features"],
        made["scorer"],
        index_fallback=fallbacks.get("index"),
        features_fallback=fallbacks.get("features"),
        scorer_fallback=fallbacks.get("scorer"),
        towers=overrides.get("towers") or UserTowers(settings),
    )
