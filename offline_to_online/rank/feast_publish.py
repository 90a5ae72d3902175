"""Publish the ranking features through Feast: generate the repository, apply, materialize, read back.

Steps (``publish_features``): check the rank artifacts against the feature spec and build the views
(nothing is written before this passes); keep a snapshot of what is published in
``feature_repo/versions/<version>/`` (the spec and both feature tables: what a rollback re-publishes,
and the spec that readers encode this version with); write the repository (``feast_repo``); copy the
registry to a staging file and, on a ``FeatureStore`` over that copy, ``apply`` the generated
``features.py``, ``materialize`` the window around the event time and read sampled entities back
through the feature services; then rename the staging file onto ``data/registry.db``.

Feast itself rewrites its file registry in place (truncate, then write), so a feature server that
re-reads it at that moment could parse a half-written file; here Feast only ever writes the staging
copy, and the live registry changes by one atomic rename: a reader sees the old registry or the new
one. Feast writes each entity's row in one operation, so a reader sees, per entity, either the
previous row or the new one. Each publish carries a strictly later event time (the version's
microsecond clock, or now for a rollback), because Feast's Redis store skips rows that are not newer
than what it holds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_exchange_center import online_layout as L
from data_exchange_center.artifacts import atomic_path, read_parquet, write_parquet
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.paths import ArtifactPaths
from offline_to_online.common import PublishVerificationError, make_readable
from offline_to_online.rank import feast_repo as F
from offline_to_online.recall.redis_users import sample_positions

log = logging.getLogger(__name__)

N_VERIFY_SAMPLE = 500
MATERIALIZE_LOOKBACK = timedelta(hours=1)


@dataclass
class FeastPublishReport:
    version: str
    repo_dir: Path
    online_store: str
    n_rows: dict[str, int]
    n_verified: dict[str, int]


@dataclass(frozen=True)
class PreparedSources:
    spec: FeatureSpec
    views: list[F.SourceView]
    tables: list[pd.DataFrame]  # the rank artifacts, aligned with ``views``


def prepare_sources(paths: ArtifactPaths) -> PreparedSources:
    """Read the spec and the user/item feature tables and check them against each other."""
    spec = FeatureSpec.load(paths.feature_spec_path)
    users = read_parquet(paths.user_features_path)
    items = read_parquet(paths.item_features_path)
    views = [F.source_view(spec, "user", users), F.source_view(spec, "item", items)]
    return PreparedSources(spec, views, [users, items])


def event_time_of(version: str) -> datetime:
    """The version id's UTC time (to the microsecond): the event time of this version's rows."""
    return datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def write_repo(
    repo_dir: Path,
    prepared: PreparedSources,
    version: str,
    yaml_config: dict[str, Any],
    event_time: datetime | None = None,
) -> None:
    """Write the data files, ``features.py`` and ``feature_store.yaml`` (each atomically)."""
    event_time = event_time or event_time_of(version)
    for view, table in zip(prepared.views, prepared.tables, strict=True):
        make_readable(write_parquet(F.source_table(view, table, event_time), repo_dir / view.path))
    with atomic_path(repo_dir / F.DEFINITIONS_FILE) as tmp:
        tmp.write_text(F.definitions_py(prepared.views, version, prepared.spec.dataset))
        make_readable(tmp)
    with atomic_path(repo_dir / F.YAML_FILE) as tmp:
        tmp.write_text(F.store_yaml(yaml_config))
        make_readable(tmp)


def load_definitions(repo_dir: Path) -> list[Any]:
    """The Feast objects that the generated ``features.py`` defines (entities, views, services)."""
    from feast import Entity, FeatureService, FeatureView

    module_name = f"_recsys_feast_definitions_{abs(hash(repo_dir))}"
    spec = importlib.util.spec_from_file_location(module_name, repo_dir / F.DEFINITIONS_FILE)
    if spec is None or spec.loader is None:
        raise PublishVerificationError(f"cannot load {repo_dir / F.DEFINITIONS_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop(module_name, None)
    kinds = (Entity, FeatureView, FeatureService)
    return [value for value in vars(module).values() if isinstance(value, kinds)]


def open_store(repo_dir: Path, config: dict[str, Any]) -> Any:
    """A ``FeatureStore`` on ``repo_dir`` with ``config`` (the yaml's content, possibly another address)."""
    from feast import FeatureStore, RepoConfig

    repo_config = RepoConfig(**config)
    repo_config.repo_path = repo_dir
    return FeatureStore(repo_path=str(repo_dir), config=repo_config)


def apply_and_materialize(store: Any, objects: list[Any], event_time: datetime) -> None:
    store.apply(objects)
    store.materialize(start_date=event_time - MATERIALIZE_LOOKBACK, end_date=event_time + timedelta(seconds=1))


def read_online(store: Any, view: F.SourceView, ids: list[int]) -> pd.DataFrame:
    """Features of ``ids`` through the view's feature service, as a frame (one row per id)."""
    service = store.get_feature_service(view.service)
    rows = [{view.join_key: int(i)} for i in ids]
    return pd.DataFrame(store.get_online_features(features=service, entity_rows=rows).to_dict())


def verify_online(store: Any, view: F.SourceView, table: pd.DataFrame, n_sample: int = N_VERIFY_SAMPLE) -> int:
    """Sampled entities read back equal to the artifact, feature by feature; returns the sample size."""
    sample = table.iloc[sample_positions(len(table), n_sample)].reset_index(drop=True)
    online = read_online(store, view, sample[view.join_key].tolist())
    for name, kind in view.features:
        if name not in online.columns:
            raise PublishVerificationError(f"Feast {view.service} does not return feature {name!r}")
        expected, actual = sample[name], online[name]
        if actual.isna().any():
            raise PublishVerificationError(f"Feast {view.view}: {int(actual.isna().sum())} sampled rows lack {name!r}")
        if not values_equal(expected, actual, kind):
            bad = int(np.flatnonzero(~elementwise_equal(expected, actual, kind))[0])
            raise PublishVerificationError(
                f"Feast {view.view}, {view.join_key} {sample[view.join_key][bad]}: {name} = {actual[bad]!r}, "
                f"artifact {expected[bad]!r}"
            )
    return len(sample)


def elementwise_equal(expected: pd.Series, actual: pd.Series, kind: str) -> np.ndarray:
    if kind == "Float32":
        return expected.to_numpy(np.float32) == actual.to_numpy(np.float32)
    if kind == "Float64":
        return expected.to_numpy(np.float64) == actual.to_numpy(np.float64)
    if kind in ("Int64", "Bool"):
        return expected.to_numpy(np.int64) == actual.to_numpy(np.int64)
    return expected.astype(str).to_numpy() == actual.astype(str).to_numpy()


def values_equal(expected: pd.Series, actual: pd.Series, kind: str) -> bool:
    return bool(elementwise_equal(expected, actual, kind).all())


def snapshot_version(repo_dir: Path, version: str, prepared: PreparedSources) -> Path:
    """``versions/<version>/``: the spec and the two feature tables as published (kept when it exists)."""
    folder = L.feature_version_dir(repo_dir, version)
    if folder.is_dir():
        return folder  # a rollback re-publishes a version that is already here
    tmp = folder.parent / f".tmp-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        prepared.spec.save(tmp / L.FEATURE_SPEC_FILE)
        for view, table in zip(prepared.views, prepared.tables, strict=True):
            write_parquet(table, tmp / view.file_name)
        for path in tmp.iterdir():
            make_readable(path)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_snapshot(repo_dir: Path, version: str) -> PreparedSources:
    """A published version's snapshot as ``PreparedSources`` (what a rollback publishes again)."""
    folder = L.feature_version_dir(repo_dir, version)
    spec = FeatureSpec.load(folder / L.FEATURE_SPEC_FILE)
    users = read_parquet(folder / "user_features.parquet")
    items = read_parquet(folder / "item_features.parquet")
    views = [F.source_view(spec, "user", users), F.source_view(spec, "item", items)]
    return PreparedSources(spec, views, [users, items])


def live_data_version(store: Any) -> str | None:
    """The ``data_version`` tag of the user feature service in ``store``'s registry (None before the first)."""
    try:
        service = store.get_feature_service(L.USER_FEATURE_SERVICE, allow_cache=False)
    except Exception:  # no registry yet, or no such service: nothing was published
        return None
    return service.tags.get(L.DATA_VERSION_TAG)


def staging_config(config: dict[str, Any], version: str) -> dict[str, Any]:
    """``config`` with the registry at a staging file beside the live one."""
    registry = dict(config["registry"], path=f"{F.DATA_DIR}/.registry-staging-{version}.db")
    return dict(config, registry=registry)


def prune_snapshots(repo_dir: Path, current: str, previous: str | None) -> list[str]:
    """Delete every version snapshot but ``current`` and ``previous``, and leftovers of killed runs."""
    versions_dir = L.feature_versions_dir(repo_dir)
    doomed = [v for v in L.list_versions(versions_dir) if v not in (current, previous)]
    for name in doomed + [p.name for p in versions_dir.glob(".tmp-*")]:
        shutil.rmtree(versions_dir / name, ignore_errors=True)
    for leftover in (repo_dir / F.DATA_DIR).glob(".registry-staging-*"):
        leftover.unlink(missing_ok=True)
    return doomed


def publish_features(
    paths: ArtifactPaths,
    prepared: PreparedSources,
    *,
    yaml_redis_url: str | None,
    store_redis_url: str | None,
    project: str = L.FEAST_PROJECT,
    version: str | None = None,
    n_verify: int = N_VERIFY_SAMPLE,
    event_time: datetime | None = None,
    yaml_config: dict[str, Any] | None = None,
) -> FeastPublishReport:
    """Snapshot, write the repository, apply + materialize + verify on a staging registry, switch it.

    SQLite when both URLs are None. ``yaml_redis_url`` is the Redis that the feature server will use
    (written to the yaml); ``store_redis_url`` the one this process reaches (they differ inside and
    outside compose). ``event_time`` defaults to the version's time (a rollback passes now), and
    ``yaml_config`` replaces the generated ``feature_store.yaml`` (a rollback keeps the live one).
    """
    version = version or L.new_version()
    event_time = event_time or event_time_of(version)
    repo_dir = paths.feature_repo_dir
    snapshot_version(repo_dir, version, prepared)
    write_repo(repo_dir, prepared, version, yaml_config or F.store_config(project, yaml_redis_url), event_time)
    config = F.store_config(project, store_redis_url, password_placeholder=False)
    live_registry = repo_dir / F.REGISTRY_PATH
    staging = repo_dir / staging_config(config, version)["registry"]["path"]
    previous = live_data_version(open_store(repo_dir, config)) if live_registry.exists() else None
    try:
        if live_registry.exists():
            shutil.copyfile(live_registry, staging)
        store = open_store(repo_dir, staging_config(config, version))
        apply_and_materialize(store, load_definitions(repo_dir), event_time)
        n_verified = {
            view.service: verify_online(store, view, table, n_verify)
            for view, table in zip(prepared.views, prepared.tables, strict=True)
        }
        make_readable(staging)
        os.replace(staging, live_registry)  # the one step that switches what readers see
    finally:
        staging.unlink(missing_ok=True)
    make_readable(prepared.spec.save(L.live_feature_spec_path(repo_dir)))
    prune_snapshots(repo_dir, version, previous if previous != version else None)
    n_rows = {view.service: len(table) for view, table in zip(prepared.views, prepared.tables, strict=True)}
    kind = "redis" if store_redis_url else "sqlite"
    log.info("Feast: version %s applied and materialized to %s (was %s), %s, read back %s",
             version, kind, previous, n_rows, n_verified)  # fmt: skip
    return FeastPublishReport(version, repo_dir, kind, n_rows, n_verified)
