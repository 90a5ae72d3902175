"""Where published state lives for the online side: version ids, embedded stores, Feast and Triton names.

The written specification is ``ONLINE_STORE_FORMAT.md``. Every publish gets a version id
(``20261125T131950123456Z-3f9a``: UTC time to the microsecond, then 4 random hex digits); ids sort by
time as strings.

Embedded stores (the default profile serves from these folders under ``paths.online_dir``)::

    online/users/CURRENT                  text: the live version id (replaced atomically)
    online/users/<version>/users.parquet  userid int64, terms list<str>, seen list<int64>, seen_labels list<int8>,
                                          seen_ratings list<float32> (absent in older versions),
                                          base_event_seq int64 (the newest event-log rating in seen; 0: none)
    online/users/<version>/vectors.npz    ids int64 (n,), vectors float32 (n, dim)
    online/users/<version>/manifest.json  version, n_users, vector_dim, sources, created_at, vector_tower
    online/items/CURRENT                  text: the live version id
    online/items/<version>/               copies of the item artifacts (item_terms.parquet, item_vectors.npz,
                                          popularity.parquet, item_neighbors.parquet), chain.json (the chain
                                          parameters selected offline), catalog.parquet (titles, years, genres:
                                          data_exchange_center.item_catalog) and manifest.json (sha256 and size of each)
    online/items/<version>/user_tower.onnx  the vector model's user side (when the run trained one), paired with
    online/items/<version>/user_tower.json  this version's item vectors: window, dim, and the Triton version of
                                          ml_user_tower that holds the same file (the compose scorer asks for it)

A version folder appears by one rename of a complete temporary folder, and CURRENT is switched after
it, so a reader that follows CURRENT always finds a complete version. A version holds everything the
service reads for it: rerunning or deleting the offline artifacts changes nothing that is served until
the next publish.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from data_exchange_center.artifacts import ArtifactError, atomic_path, read_json, sha256_of
from data_exchange_center.model_signature import MODEL_NAME
from data_exchange_center.paths import ArtifactPaths

VERSION_RE = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{4}$")

# --- embedded stores -----------------------------------------------------------------------------------
CURRENT_FILE = "CURRENT"
MANIFEST_FILE = "manifest.json"
USERS_TABLE_FILE = "users.parquet"
USERS_VECTORS_FILE = "vectors.npz"
SEEN = "seen"
SEEN_LABELS = "seen_labels"
SEEN_RATINGS = "seen_ratings"  # the ranker's history features of a user with live events
BASE_EVENT_SEQ = "base_event_seq"  # the user's events after this store sequence number apply online
ITEM_TERMS_FILE = "item_terms.parquet"
ITEM_VECTORS_FILE = "item_vectors.npz"
POPULARITY_FILE = "popularity.parquet"
ITEM_NEIGHBORS_FILE = "item_neighbors.parquet"
CHAIN_FILE = "chain.json"  # max_triggers, like_weight, prior_weight: the chain parameters selected offline
USER_TOWER_FILE = "user_tower.onnx"
USER_TOWER_ARGS_FILE = "user_tower.json"  # window, dim (output width), triton_version

# --- Feast -------------------------------------------------------------------------------------------
FEAST_PROJECT = "recsys"
USER_ENTITY = "user"
ITEM_ENTITY = "item"
USER_FEATURE_VIEW = "user_feature_view"
ITEM_FEATURE_VIEW = "item_feature_view"
USER_FEATURE_SERVICE = "user_features"
ITEM_FEATURE_SERVICE = "item_features"
EVENT_TIMESTAMP = "event_timestamp"
DATA_VERSION_TAG = "data_version"

FEATURE_SPEC_FILE = "feature_spec.json"
FEATURE_VERSIONS_DIRNAME = "versions"

# --- Triton ------------------------------------------------------------------------------------------
PYTHON_MODEL_REPOSITORY_DIRNAME = "model_repository_python"


def new_version(now: datetime | None = None, token: str | None = None) -> str:
    """A fresh version id: ``YYYYMMDDTHHMMSSffffffZ-xxxx`` (UTC, microseconds, 4 hex digits against collisions)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S%fZ}-{token or secrets.token_hex(2)}"


def is_version(name: str) -> bool:
    return bool(VERSION_RE.match(name))


def users_store_dir(paths: ArtifactPaths) -> Path:
    return paths.online_dir / "users"


def items_store_dir(paths: ArtifactPaths) -> Path:
    return paths.online_dir / "items"


@dataclass(frozen=True)
class ItemFiles:
    """The four item files that the item index is built from (in the offline folders or in a version)."""

    terms_path: Path
    vectors_path: Path
    popularity_path: Path
    neighbors_path: Path

    @classmethod
    def of_artifacts(cls, paths: ArtifactPaths) -> ItemFiles:
        """The offline stages' working files (what a publish copies)."""
        return cls(paths.item_terms_path, paths.item_vectors_path, paths.popularity_path, paths.item_neighbors_path)

    @classmethod
    def in_version(cls, version_dir: Path) -> ItemFiles:
        """The copies inside a published item version (what the service reads)."""
        return cls(
            version_dir / ITEM_TERMS_FILE,
            version_dir / ITEM_VECTORS_FILE,
            version_dir / POPULARITY_FILE,
            version_dir / ITEM_NEIGHBORS_FILE,
        )

    def all(self) -> list[Path]:
        return [self.terms_path, self.vectors_path, self.popularity_path, self.neighbors_path]


CHAIN_KEYS = {"max_triggers": int, "like_weight": float, "prior_weight": float}
# kept when present (versions published before they existed serve the ``chain.TriggerPolicy`` defaults)
CHAIN_OPTIONAL_KEYS = {"half_life": float, "unliked_weight": float, "vector_weight": float, "ranker_final": int}


def check_chain_parameters(raw: object, source: Path | str) -> dict[str, int | float]:
    """The published chain parameters (``chain.json``): every key of ``CHAIN_KEYS``, finite, non-negative."""
    if not isinstance(raw, dict):
        raise ArtifactError(f"{source}: expected a JSON object of chain parameters")
    missing = sorted(set(CHAIN_KEYS) - set(raw))
    if missing:
        raise ArtifactError(f"{source} lacks {missing}: publish the item version again")
    checked: dict[str, int | float] = {}
    present = {**CHAIN_KEYS, **{k: kind for k, kind in CHAIN_OPTIONAL_KEYS.items() if k in raw}}
    for key, kind in present.items():
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
            raise ArtifactError(f"{source}: {key} = {value!r} is not a finite non-negative number")
        if kind is int and int(value) != value:
            raise ArtifactError(f"{source}: {key} = {value!r} is not a whole number")
        checked[key] = kind(value)
    return checked


def verify_version_files(version_dir: Path) -> dict[str, object]:
    """The version's ``manifest.json``, after checking that every file it lists has its recorded size and
    SHA-256 (``ArtifactError`` names the first that does not): a damaged version is never loaded."""
    manifest = read_json(version_dir / MANIFEST_FILE)
    for name, recorded in manifest.get("files", {}).items():
        path = version_dir / name
        if not path.exists() or path.stat().st_size != recorded["bytes"] or sha256_of(path) != recorded["sha256"]:
            raise ArtifactError(f"{path} does not match {version_dir / MANIFEST_FILE}: publish again or roll back")
    return dict(manifest)


def read_chain_file(version_dir: Path) -> dict[str, int | float]:
    """The chain parameters of a published item version."""
    return check_chain_parameters(read_json(version_dir / CHAIN_FILE), version_dir / CHAIN_FILE)


@dataclass(frozen=True)
class UserTowerArgs:
    """How an item version's user tower is called: ``window`` recent items in, ``dim`` floats out (the
    item vectors' width); ``triton_version`` of ``ml_user_tower`` holds the same ONNX file (None: none)."""

    window: int
    dim: int
    triton_version: int | None

    def to_dict(self) -> dict[str, int | None]:
        return {"window": self.window, "dim": self.dim, "triton_version": self.triton_version}


def read_user_tower_args(version_dir: Path) -> UserTowerArgs | None:
    """The user tower of a published item version, or None when the version has none."""
    path = version_dir / USER_TOWER_ARGS_FILE
    if not path.exists():
        return None
    raw = read_json(path)
    try:
        version = raw.get("triton_version")
        args = UserTowerArgs(int(raw["window"]), int(raw["dim"]), None if version is None else int(version))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a user tower description ({exc})") from None
    if args.window < 1 or args.dim < 1 or not (version_dir / USER_TOWER_FILE).exists():
        raise ArtifactError(f"{path}: window and dim must be positive and {USER_TOWER_FILE} present")
    return args


def read_current_version(store_dir: Path) -> str | None:
    """The live version id of an embedded store, or None when nothing was published yet."""
    pointer = store_dir / CURRENT_FILE
    if not pointer.exists():
        return None
    version = pointer.read_text().strip()
    return version if is_version(version) else None


def current_version_dir(store_dir: Path) -> Path | None:
    version = read_current_version(store_dir)
    return None if version is None else store_dir / version


def write_current_version(store_dir: Path, version: str) -> Path:
    """Switch the store to ``version`` (one atomic rename of the pointer file)."""
    if not is_version(version):
        raise ValueError(f"{version!r} is not a version id")
    if not (store_dir / version).is_dir():
        raise FileNotFoundError(f"cannot switch {store_dir} to {version}: its folder does not exist")
    with atomic_path(store_dir / CURRENT_FILE) as tmp:
        tmp.write_text(version + "\n")
        tmp.chmod(0o644)  # readable by the serving processes (mkstemp makes 0600)
    return store_dir / CURRENT_FILE


def list_versions(store_dir: Path) -> list[str]:
    """Complete version folders of a store, oldest first (temporary folders start with a dot)."""
    if not store_dir.is_dir():
        return []
    return sorted(p.name for p in store_dir.iterdir() if p.is_dir() and is_version(p.name))


# --- Feast feature repository ---------------------------------------------------------------------
def feature_versions_dir(repo_dir: Path) -> Path:
    """``feature_repo/versions/``: one snapshot folder per published feature version."""
    return repo_dir / FEATURE_VERSIONS_DIRNAME


def feature_version_dir(repo_dir: Path, version: str) -> Path:
    """``feature_repo/versions/<version>/``: the spec and both feature tables of one published version."""
    return feature_versions_dir(repo_dir) / version


def feature_spec_of_version(repo_dir: Path, version: str) -> Path:
    """The feature spec that a published feature version is encoded with."""
    return feature_version_dir(repo_dir, version) / FEATURE_SPEC_FILE


def live_feature_spec_path(repo_dir: Path) -> Path:
    """``feature_repo/feature_spec.json``: the spec of the live feature version (replaced at each switch)."""
    return repo_dir / FEATURE_SPEC_FILE


# --- Triton model repositories ----------------------------------------------------------------------
def python_model_repository_dir(paths: ArtifactPaths) -> Path:
    """The Python-backend variant's repository, beside ``paths.model_repository_dir``."""
    return paths.model_repository_dir.parent / PYTHON_MODEL_REPOSITORY_DIRNAME


def model_versions(repository_dir: Path, model: str = MODEL_NAME) -> list[int]:
    """The numbered version folders of ``model`` that hold a file, ascending."""
    model_dir = repository_dir / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and any(p.iterdir()))


MODEL_CONFIG_FILE = "config.pbtxt"
_PINNED_POLICY = re.compile(r"version_policy:\s*\{\s*specific:\s*\{\s*versions:\s*\[\s*(\d+)\s*\]\s*\}\s*\}")


def pinned_model_version(config_text: str) -> int | None:
    """The version that a ``config.pbtxt`` pins (``version_policy: { specific: { versions: [ N ] } }``,
    written by a rollback), or None for ``latest``."""
    match = _PINNED_POLICY.search(config_text)
    return int(match.group(1)) if match else None


def served_model_version(repository_dir: Path, model: str = MODEL_NAME) -> int | None:
    """The version Triton serves: the pinned one when the config pins an existing version, else the highest."""
    versions = model_versions(repository_dir, model)
    config = repository_dir / model / MODEL_CONFIG_FILE
    pinned = pinned_model_version(config.read_text()) if config.exists() else None
    if pinned is not None and pinned in versions:
        return pinned
    return versions[-1] if versions else None


def latest_model_path(repository_dir: Path, model: str = MODEL_NAME) -> Path | None:
    """``<repo>/<model>/<served version>/model.onnx``: what Triton serves and the embedded scorer loads
    (the highest version, or the one a rollback pinned)."""
    version = served_model_version(repository_dir, model)
    if version is None:
        return None
    path = repository_dir / model / str(version) / "model.onnx"
    return path if path.exists() else None
