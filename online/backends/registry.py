"""The name-to-class table of backends: which adapter serves each role on each profile.

Entries are ``"module:Class"`` strings imported on use, so the embedded profile never imports the
service clients (redis, elasticsearch, tritonclient) and the compose profile only what it uses.
Every class takes the ``Settings`` (and the shared metrics where it reports its own errors).
"""

from __future__ import annotations

import importlib
from typing import Any

from data_exchange_center.settings import Settings
from online.service.recommender import Backends

ROLES = ("profiles", "index", "features", "scorer")
BACKENDS: dict[str, dict[str, str]] = {
    "embedded": {
        "profiles": "online.backends.embedded_profiles:EmbeddedProfileStore",
        "index": "online.backends.local_index:LocalItemIndex",
        "features": "online.backends.feast_embedded:EmbeddedFeatureStore",
        "scorer": "online.backends.onnx_scorer:OnnxScorer",
    },
    "compose": {
        "profiles": "online.backends.redis_profiles:RedisProfileStore",
        "index": "online.backends.es_index:EsItemIndex",
        "features": "online.backends.feast_http:FeastHttpFeatureStore",
        "scorer": "online.backends.triton_scorer:TritonScorer",
    },
}
# in-process fallbacks of the remote roles (loaded from the same artifacts)
FALLBACKS: dict[str, dict[str, str]] = {
    "embedded": {},
    "compose": {
        "index": "online.backends.local_index:LocalItemIndex",
        "scorer": "online.backends.onnx_scorer:OnnxScorer",
    },
}


def backend_class(path: str) -> Any:
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_backends(settings: Settings, overrides: dict[str, Any] | None = None) -> Backends:
    """The profile's adapters; ``overrides`` maps a role to a ready-made adapter (tests, tools)."""
    overrides = overrides or {}
    table, fallbacks = BACKENDS[settings.profile], FALLBACKS[settings.profile]
    made = {role: overrides.get(role) or backend_class(table[role])(settings) for role in ROLES}
    index_fallback = backend_class(fallbacks["index"])(settings) if "index" in fallbacks else None
    scorer_fallback = backend_class(fallbacks["scorer"])(settings) if "scorer" in fallbacks else None
    return Backends(made["profiles"], made["index"], made["features"], made["scorer"], index_fallback, scorer_fallback)
