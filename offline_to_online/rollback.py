"""Switch a published component back to its previous version, or to a named one, on every store it lives in.

A component is served through one or more *pointers*, each switched in one atomic step to a version
that is already complete in its store (a rollback writes no data, only pointers, except for Feast
whose online store holds one row per entity):

| component | embedded role backend | server role backend |
|---|---|---|
| users | ``online/users/CURRENT`` | Redis ``{ns}:users:current`` |
| items | ``online/items/CURRENT`` | Elasticsearch alias, then ``online/items/CURRENT`` (the fallback) |
| features | Feast registry (SQLite store) | Feast registry (Redis store) |
| model | the ``config.pbtxt`` version policy of both Triton repositories (``model_repository``, ``…_python``) |

The first pointer decides what "the previous version" is: the newest complete version older than
the one it serves (versions sort by publish time). ``--to`` names any complete version instead.
Every pointer is checked to hold the target before anything is switched.

Every rollback runs under a journal, ``online/rollback/<component>.json`` (``{"component",
"target", "from"}``, written atomically before the first switch, removed after the last): a rollback
killed between two switches (or inside Feast's re-publish) leaves every pointer on a complete
version, and the next run of the command finishes the interrupted rollback first. Nothing is ever deleted by a
rollback; the next publish prunes what neither it nor the version before it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import yaml

from data_exchange_center import es_layout as E
from data_exchange_center import online_layout as L
from data_exchange_center import redis_layout as R
from data_exchange_center.artifacts import ArtifactError, atomic_path, read_json, write_json
from data_exchange_center.settings import Settings
from offline_to_online.common import make_readable

log = logging.getLogger(__name__)
COMPONENTS = ("users", "items", "features", "model")


class RollbackError(ArtifactError):
    """The rollback cannot be done as asked (no earlier version, unknown or incomplete target)."""


@dataclass(frozen=True)
class Pointer:
    """One store's pointer to the live version of a component."""

    name: str
    current: Callable[[], str | None]
    versions: Callable[[], list[str]]  # complete versions, oldest first
    check: Callable[[str], None]  # raises ArtifactError when the version cannot be served
    switch: Callable[[str], object]  # one atomic step; switching to the current version changes nothing


@dataclass
class RollbackReport:
    component: str
    target: str
    before: dict[str, str | None]
    switched: list[str] = field(default_factory=list)
    resumed: bool = False


# --- pointers of each store ---------------------------------------------------------------------------
def file_store_pointer(name: str, store_dir: Path, check: Callable[[Path], None]) -> Pointer:
    """An embedded store: ``CURRENT`` in ``store_dir``, versions are its folders."""

    def check_version(version: str) -> None:
        if version not in L.list_versions(store_dir):
            raise ArtifactError(f"{name}: no version {version} in {store_dir}")
        check(store_dir / version)

    return Pointer(
        name,
        lambda: L.read_current_version(store_dir),
        lambda: L.list_versions(store_dir),
        check_version,
        lambda version: L.write_current_version(store_dir, version),
    )


def check_user_folder(folder: Path) -> None:
    for name in (L.USERS_TABLE_FILE, L.USERS_VECTORS_FILE, L.MANIFEST_FILE):
        if not (folder / name).exists():
            raise ArtifactError(f"{folder} lacks {name}: not a complete user version")


def check_item_folder(folder: Path) -> None:
    L.verify_version_files(folder)
    L.read_chain_file(folder)


def redis_pointer(client: Any, namespace: str) -> Pointer:
    """Redis users: the pointer key; versions are the registered ones whose meta says ``complete``."""

    def is_complete(version: str) -> bool:
        return client.hget(R.meta_key(namespace, version), b"state") == R.STATE_COMPLETE

    def versions() -> list[str]:
        registered = sorted(raw.decode() for raw in cast(set[bytes], client.smembers(R.versions_key(namespace))))
        return [v for v in registered if is_complete(v)]

    def check(version: str) -> None:
        if not is_complete(version):
            raise ArtifactError(f"Redis users version {version} is not complete (or was deleted)")

    def current() -> str | None:
        raw = client.get(R.pointer_key(namespace))
        return None if raw is None else raw.decode()

    return Pointer("redis users", current, versions, check, lambda v: client.set(R.pointer_key(namespace), v))


def es_pointer(api: Any, alias: str) -> Pointer:
    """Elasticsearch items: the alias; versions are the ``{alias}-*`` indexes (their ``_meta`` version)."""

    def indexes_by_version() -> dict[str, str]:
        found = {}
        for index in api.list_indexes(E.index_pattern(alias)):
            meta = api.mapping_meta(index)
            if meta.get(E.META_VERSION) and meta.get(E.META_CHAIN):
                found[str(meta[E.META_VERSION])] = index
        return found

    def current() -> str | None:
        holders = api.alias_holders(alias)
        if not holders:
            return None
        version = api.mapping_meta(holders[-1]).get(E.META_VERSION)
        return str(version) if version else None

    def check(version: str) -> None:
        if version not in indexes_by_version():
            raise ArtifactError(f"no Elasticsearch index {E.index_name(alias, version)} with its _meta")

    def switch(version: str) -> None:
        api.update_aliases(E.alias_switch_actions(alias, indexes_by_version()[version], api.alias_holders(alias)))

    return Pointer("elasticsearch alias", current, lambda: sorted(indexes_by_version()), check, switch)


def triton_pointer(repository: Path) -> Pointer:
    """A Triton model repository: the version policy of ``config.pbtxt`` (pinned by a rollback)."""
    from offline_to_online.triton_config import with_version_policy

    config = repository / "ml_rec" / L.MODEL_CONFIG_FILE

    def check(version: str) -> None:
        if not (repository / "ml_rec" / version / "model.onnx").exists():
            raise ArtifactError(f"no model version {version} in {repository}")
        if not config.exists():
            raise ArtifactError(f"no {config}: publish the model first")
        for leftover in config.parent.glob(f".{config.name}.*.tmp"):  # a run killed while writing left it
            leftover.unlink(missing_ok=True)

    def switch(version: str) -> None:
        pinned = None if int(version) == max(L.model_versions(repository)) else int(version)
        with atomic_path(config) as tmp:
            tmp.write_text(with_version_policy(config.read_text(), pinned))
            make_readable(tmp)

    def current() -> str | None:
        served = L.served_model_version(repository)
        return None if served is None else str(served)

    return Pointer(
        f"triton {repository.name}",
        current,
        lambda: [str(v) for v in L.model_versions(repository)],
        check,
        switch,
    )


def feast_pointer(settings: Settings) -> Pointer:
    """Feast: the registry's ``data_version``; switching re-publishes that version's snapshot."""
    from offline_to_online.rank import feast_publish as FP
    from offline_to_online.rank import feast_repo as F

    paths, repo = settings.paths, settings.paths.feature_repo_dir
    yaml_path = repo / F.YAML_FILE

    def store_config() -> dict[str, Any]:
        live = yaml.safe_load(yaml_path.read_text())
        redis_url = settings.redis_url if live["online_store"]["type"] == "redis" else None
        return F.store_config(live["project"], redis_url, password_placeholder=False)

    def current() -> str | None:
        if not (repo / F.REGISTRY_PATH).exists():
            return None
        return FP.live_data_version(FP.open_store(repo, store_config()))

    def check(version: str) -> None:
        folder = L.feature_version_dir(repo, version)
        for name in (L.FEATURE_SPEC_FILE, "user_features.parquet", "item_features.parquet"):
            if not (folder / name).exists():
                raise ArtifactError(f"{folder} lacks {name}: not a complete feature version")
        if not yaml_path.exists():
            raise ArtifactError(f"no {yaml_path}: publish the features first")

    def switch(version: str) -> None:
        live_yaml = yaml.safe_load(yaml_path.read_text())
        config = store_config()
        redis_url = settings.redis_url if config["online_store"]["type"] == "redis" else None
        FP.publish_features(
            paths, FP.load_snapshot(repo, version), yaml_redis_url=None, store_redis_url=redis_url,
            project=live_yaml["project"], version=version, event_time=datetime.now(UTC), yaml_config=live_yaml,
        )  # fmt: skip

    return Pointer("feast registry", current, lambda: L.list_versions(L.feature_versions_dir(repo)), check, switch)


def pointers_for(settings: Settings, component: str) -> list[Pointer]:
    """The pointers of ``component`` on the configured backends, the deciding one first."""
    paths = settings.paths
    if component == "users":
        if settings.backend_of("profiles") == "redis":
            from offline_to_online.recall.redis_users import connect_redis

            return [redis_pointer(connect_redis(settings.redis_url), settings.redis_namespace)]
        return [file_store_pointer("embedded users", L.users_store_dir(paths), check_user_folder)]
    if component == "items":
        local = file_store_pointer("embedded items", L.items_store_dir(paths), check_item_folder)
        if settings.backend_of("index") == "elasticsearch":
            from offline_to_online.recall.es_client import ElasticsearchApi, connect_es

            return [es_pointer(ElasticsearchApi(connect_es(settings)), settings.es_index_alias), local]
        return [local]
    if component == "features":
        return [feast_pointer(settings)]
    if component == "model":
        return [triton_pointer(paths.model_repository_dir), triton_pointer(L.python_model_repository_dir(paths))]
    raise RollbackError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")


# --- the rollback --------------------------------------------------------------------------------------
def journal_path(settings: Settings, component: str) -> Path:
    return settings.paths.online_dir / "rollback" / f"{component}.json"


def choose_target(primary: Pointer, to: str | None) -> str:
    """``to`` (a complete version of ``primary``), or the newest complete version older than the live one."""
    versions, current = primary.versions(), primary.current()
    if to is not None:
        if to not in versions:
            raise RollbackError(f"{primary.name} has no complete version {to!r}; it has {versions}")
        return to
    if current is None:
        raise RollbackError(f"{primary.name} serves nothing yet: publish first")
    older = [v for v in versions if sort_key(v) < sort_key(current)]
    if not older:
        raise RollbackError(f"{primary.name}: no version before {current}; name one with --to (it has {versions})")
    return older[-1]


def sort_key(version: str) -> tuple[int, str]:
    """Model versions are numbers, the others ids that sort by time as strings."""
    return (int(version), "") if version.isdigit() else (0, version)


def switch_all(component: str, pointers: list[Pointer], target: str, journal: Path) -> list[str]:
    """Check the target everywhere, then switch each pointer under the journal."""
    for pointer in pointers:
        pointer.check(target)
    write_json({"component": component, "target": target, "from": pointers[0].current()}, journal)
    switched = []
    for pointer in pointers:
        if pointer.current() != target:
            pointer.switch(target)
            switched.append(pointer.name)
            log.info("rollback %s: %s now serves %s", component, pointer.name, target)
    journal.unlink(missing_ok=True)
    return switched


def rollback(settings: Settings, component: str, to: str | None = None) -> RollbackReport:
    """Switch ``component`` back to its previous version (or ``to``) on every pointer; see the module docstring."""
    pointers = pointers_for(settings, component)
    journal = journal_path(settings, component)
    before = {p.name: p.current() for p in pointers}
    if journal.exists():  # a rollback was interrupted: finish it first
        pending = str(read_json(journal)["target"])
        log.warning("rollback %s: finishing the interrupted rollback to %s", component, pending)
        switched = switch_all(component, pointers, pending, journal)
        if to is None or to == pending:
            return RollbackReport(component, pending, before, switched, resumed=True)
    target = choose_target(pointers[0], to)
    return RollbackReport(component, target, before, switch_all(component, pointers, target, journal))


def list_versions(settings: Settings, component: str) -> dict[str, dict[str, Any]]:
    """Per pointer: its complete versions and the one it serves (``--list``)."""
    return {p.name: {"current": p.current(), "versions": p.versions()} for p in pointers_for(settings, component)}
