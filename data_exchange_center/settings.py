"""One typed settings object per process: environment variables over an optional YAML file.

Every setting has its default here and only here. The environment variable of a field is
``RECSYS_<FIELD>`` in upper case (``redis_url`` -> ``RECSYS_REDIS_URL``); ``RECSYS_CONFIG`` names an
optional YAML file whose keys are field names. Unknown keys and bad values stop the process with a
message naming the key and where it came from. Secrets (passwords, API keys) come from the
environment or the YAML file and have no working default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from data_exchange_center.paths import ArtifactPaths, default_data_dir

ENV_PREFIX = "RECSYS_"
CONFIG_ENV = "RECSYS_CONFIG"
Profile = Literal["embedded", "compose"]
ROLES = ("profiles", "index", "features", "scorer")  # the online service's backend roles
# The backend of each role on each profile; a role's own setting (``RECSYS_INDEX_BACKEND=local``, ...) wins.
# "local" is in-process over the published artifacts; the others are servers.
PRESETS: dict[str, dict[str, str]] = {
    "embedded": {"profiles": "local", "index": "local", "features": "local", "scorer": "local"},
    "compose": {"profiles": "redis", "index": "elasticsearch", "features": "feast-redis", "scorer": "triton"},
}


class SettingsError(Exception):
    """A setting is unknown or has a bad value; the message names it and its source."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Profile = Field("embedded", description="backends: embedded (in-process) or compose (services)")
    data_dir: Path = Field(default_factory=default_data_dir, description="artifact folder")
    host: str = Field("127.0.0.1", description="address the online service listens on")
    port: int = Field(5000, ge=1, le=65535, description="port the online service listens on")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    api_key: SecretStr | None = Field(None, description="if set, requests must send it in the X-API-Key header")
    # backends (compose profile)
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for user profiles")
    redis_namespace: str = Field("recsys", description="prefix of every Redis key")
    es_url: str = Field("https://127.0.0.1:9200", description="Elasticsearch for the item index")
    es_username: str = Field("elastic", description="Elasticsearch user (with es_password)")
    es_password: SecretStr | None = Field(None, description="Elasticsearch password (no default: from .env)")
    es_api_key: SecretStr | None = Field(None, description="Elasticsearch API key (instead of user/password)")
    es_ca_certs: Path | None = Field(None, description="CA bundle that signed the Elasticsearch certificate")
    es_verify_certs: bool = Field(True, description="verify the Elasticsearch TLS certificate")
    es_index_alias: str = Field("recsys_items", description="alias that points at the live item index")
    feast_url: str = Field("http://127.0.0.1:6566", description="Feast feature server (compose profile)")
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC address (compose profile)")
    # per-role backends (None: the profile's preset, see PRESETS)
    profiles_backend: Literal["local", "redis"] | None = Field(None, description="user profile store")
    index_backend: Literal["local", "elasticsearch"] | None = Field(None, description="item index")
    features_backend: Literal["local", "feast-redis", "feast-server"] | None = Field(
        None, description="feature store: local (Feast SDK, SQLite), feast-redis (Feast's Redis store), feast-server"
    )
    scorer_backend: Literal["local", "triton"] | None = Field(None, description="scorer: local (ONNX Runtime), triton")
    ready_strict: bool = Field(False, description="/ready demands every primary backend (not only a fallback)")
    # request budget and resilience
    request_timeout_ms: int = Field(200, ge=10, description="time budget of one recommendation request")
    backend_timeout_ms: int = Field(50, ge=1, description="time budget of one backend call")
    scorer_timeout_ms: int = Field(
        80, ge=1, description="time budget of one scorer call (the ranker, the user tower), at least backend_timeout_ms"
    )
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open a circuit breaker")
    breaker_reset_s: float = Field(2.0, gt=0, description="seconds before an open breaker lets one call through")
    max_in_flight: int = Field(
        32, ge=0, description="requests one gunicorn worker has in its threads; beyond, 503 at once (0: no bound)"
    )
    worker_load_wait_s: float = Field(
        60.0, ge=0, description="a gunicorn worker accepts connections once its snapshots loaded, waiting at most this"
    )
    rate_limit_rps: float = Field(0.0, ge=0, description="per-client requests per second (token bucket; 0: off)")
    rate_limit_burst: int = Field(20, ge=1, description="per-client burst of the rate limit")
    # the chain
    default_size: int = Field(50, ge=1, le=200, description="items returned when a request gives no size")
    max_size: int = Field(200, ge=1, le=1000, description="largest size a request may ask for")
    i2i_quota: int = Field(200, ge=0, description="candidates from the item-to-item channel")
    vector_quota: int = Field(100, ge=0, description="candidates from the vector (kNN) channel")
    term_quota: int = Field(50, ge=0, description="candidates from the genre-term channel")
    popularity_quota: int = Field(50, ge=0, description="candidates from the popularity fallback")
    # live feedback (POST /ml/events)
    event_store: Literal["auto", "sqlite", "redis"] = Field(
        "auto", description="event log: sqlite (embedded), redis (compose) or auto (by profile)"
    )
    events_path: Path | None = Field(None, description="SQLite event log (default data_dir/events/events.sqlite3)")
    events_redis_url: str | None = Field(None, description="Redis for the event log (default: redis_url)")
    event_id_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long Redis remembers an event_id (dedup)")
    max_events_per_request: int = Field(1000, ge=1, le=10000, description="events in one POST /ml/events")
    events_read_limit: int = Field(500, ge=0, description="a user's most recent events applied to a request")
    experiment_variants: str = Field(
        "", description="experiments: 'name:weight[:key=value...],...' (e.g. 'a:1,b:1:like_weight=0'); '' = none"
    )
    experiment_salt: str = Field("recsys", description="salt of the user-id hash that assigns variants")

    @property
    def paths(self) -> ArtifactPaths:
        return ArtifactPaths(self.data_dir)

    @property
    def chain_quotas(self) -> dict[str, int]:
        """Candidates per recall channel (``chain.recall_channels``'s quotas)."""
        return {"i2i": self.i2i_quota, "vector": self.vector_quota, "term": self.term_quota,
                "popularity": self.popularity_quota}  # fmt: skip

    @property
    def event_log_path(self) -> Path:
        return self.events_path or self.data_dir / "events" / "events.sqlite3"

    def backend_of(self, role: str) -> str:
        """The backend serving ``role`` (one of ``ROLES``): its own setting, else the profile's preset."""
        chosen = getattr(self, f"{role}_backend")
        return str(chosen) if chosen is not None else PRESETS[self.profile][role]


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build settings from (lowest first) defaults, the YAML file, the environment, ``overrides``."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    config_path = env.get(CONFIG_ENV)
    if config_path:
        for key, value in _read_yaml(Path(config_path)).items():
            values[key] = value
            source[key] = f"{config_path} (key {key!r})"
    fields = Settings.model_fields
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name.removeprefix(ENV_PREFIX).lower()
        if key in fields and raw == "" and fields[key].default is None:
            continue  # an empty optional value (compose passes RECSYS_API_KEY="") means unset
        if key in fields:
            values[key] = raw
            source[key] = f"environment variable {name}"
    for key, value in (overrides or {}).items():
        values[key] = value
        source[key] = f"override {key!r}"
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else "?"
            where = source.get(key, "defaults")
            problems.append(f"{key} from {where}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SettingsError(f"settings file {path} (from {CONFIG_ENV}) does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of setting names to values")
    unknown = sorted(set(loaded) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(
            f"settings file {path}: unknown keys {unknown}; known keys: {sorted(Settings.model_fields)}"
        )
    return loaded
