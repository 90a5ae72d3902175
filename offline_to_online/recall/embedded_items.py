"""Publish the item index as a self-contained version: copies of the item artifacts and the chain parameters.

A version folder ``online/items/<version>/`` holds copies of the four item artifacts
(``item_terms.parquet``, ``item_vectors.npz``, ``popularity.parquet``, ``item_neighbors.parquet``),
``chain.json`` (the chain parameters selected offline), the vector model's user side when the run has
one (``user_tower.onnx`` and ``user_tower.json``: computed at request time and paired with this
version's item vectors; the same file goes to Triton as a new version of ``ml_user_tower``, whose number
the JSON records) and ``manifest.json`` (size and sha256 of each file). The in-process index of the
embedded profile, and the compose profile's fallback, load only from there, so rerunning or deleting the
offline artifacts changes nothing that is served until the next publish.

Steps: copy into ``online/items/.tmp-<version>/``; check the copies (``read_item_files``: what is
checked is what is served); write the manifest and read it back against the files; rename the folder
into place (``stage_item_version``); then switch ``CURRENT`` and prune (``activate_item_version``).
The compose profile stages the folder, builds the Elasticsearch index of the same version, and
activates the folder only after the alias has moved.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_exchange_center import online_layout as L
from data_exchange_center.artifacts import ArtifactError, read_json, sha256_of, write_json
from data_exchange_center.item_catalog import CATALOG_FILE, catalog_from_artifacts, write_catalog
from data_exchange_center.paths import ArtifactPaths
from offline_to_online.common import PublishVerificationError, make_readable
from offline_to_online.recall.embedded_users import TMP_PREFIX, prune_versions, remove_temporary_folders
from offline_to_online.recall.item_source import ItemSource, read_item_files
from offline_to_online.triton_config import Backend
from offline_to_online.triton_publish import next_user_tower_version, publish_user_tower

log = logging.getLogger(__name__)


@dataclass
class EmbeddedItemsReport:
    version: str
    previous: str | None
    n_items: int
    manifest_path: Path
    deleted: list[str] = field(default_factory=list)


def items_manifest(folder: Path, source: ItemSource, version: str, copied_from: dict[str, str]) -> dict[str, Any]:
    """What the version holds: counts, and size + sha256 of every file in ``folder``."""
    names = [
        *copied_from,
        L.CHAIN_FILE,
        CATALOG_FILE,
        *([L.USER_TOWER_ARGS_FILE] if L.USER_TOWER_FILE in copied_from else []),
    ]
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)} for name in names}
    for name, origin in copied_from.items():
        files[name]["copied_from"] = origin
    return {
        "version": version,
        "n_items": source.n_items,
        "n_vectors": len(source.vector_ids),
        "vector_dim": source.vector_dim,
        "similarity": "inner_product",
        "term_counts": source.term_counts(),
        "files": files,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def copy_artifacts(paths: ArtifactPaths, folder: Path) -> dict[str, str]:
    """Copy the four item artifacts into ``folder``; returns {file name: path relative to the data dir}."""
    copied = {}
    for source_path, target in zip(
        L.ItemFiles.of_artifacts(paths).all(), L.ItemFiles.in_version(folder).all(), strict=True
    ):
        if not source_path.exists():
            raise ArtifactError(f"missing artifact {source_path}: run the stage that writes it first")
        shutil.copyfile(source_path, target)
        make_readable(target)
        copied[target.name] = str(source_path.relative_to(paths.data_dir))
    return copied


def tower_repositories(paths: ArtifactPaths) -> dict[Backend, Path]:
    return {"onnxruntime": paths.model_repository_dir, "python": L.python_model_repository_dir(paths)}


def plan_user_tower(paths: ArtifactPaths) -> L.UserTowerArgs | None:
    """How the item version will call the run's user tower: its window, width and the Triton version it
    will get (None when the vector stage exported no tower)."""
    if not paths.user_tower_onnx_path.exists():
        return None
    args = read_json(paths.user_tower_args_path)
    window, dim = int(args["window"]), int(args["dim"]) + 1  # [u, 1]
    return L.UserTowerArgs(window, dim, next_user_tower_version(tower_repositories(paths)))


def copy_user_tower(paths: ArtifactPaths, folder: Path, tower: L.UserTowerArgs) -> dict[str, str]:
    target = folder / L.USER_TOWER_FILE
    shutil.copyfile(paths.user_tower_onnx_path, target)
    make_readable(target)
    make_readable(write_json(tower.to_dict(), folder / L.USER_TOWER_ARGS_FILE))
    return {target.name: str(paths.user_tower_onnx_path.relative_to(paths.data_dir))}


def stage_item_version(paths: ArtifactPaths, chain: dict[str, int | float], version: str) -> tuple[Path, ItemSource]:
    """Write ``online/items/<version>/`` complete and verified (``CURRENT`` unchanged); returns it and the
    item source read from its copies (what the version serves)."""
    store_dir = L.items_store_dir(paths)
    remove_temporary_folders(store_dir)
    tmp_dir = store_dir / f"{TMP_PREFIX}{version}"
    tmp_dir.mkdir(parents=True)
    try:
        copied = copy_artifacts(paths, tmp_dir)
        tower = plan_user_tower(paths)
        if tower is not None:
            copied |= copy_user_tower(paths, tmp_dir, tower)
        make_readable(write_json(chain, tmp_dir / L.CHAIN_FILE))
        make_readable(write_catalog(catalog_from_artifacts(paths), tmp_dir))  # titles, years, genres for responses
        source = read_item_files(L.ItemFiles.in_version(tmp_dir))
        make_readable(write_json(items_manifest(tmp_dir, source, version, copied), tmp_dir / L.MANIFEST_FILE))
        verify_item_version(tmp_dir, source, chain)
        if tower is not None and tower.dim != source.vector_dim:
            raise PublishVerificationError(
                f"the user tower gives {tower.dim} floats, the item vectors have {source.vector_dim}: "
                "both must come from one vector-recall run"
            )
        if tower is not None and tower.triton_version is not None:  # only a verified version gets a Triton model
            publish_user_tower(paths.user_tower_onnx_path, tower.window, tower.dim, tower_repositories(paths),
                               tower.triton_version)  # fmt: skip
        tmp_dir.rename(store_dir / version)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return store_dir / version, source


def verify_item_version(folder: Path, source: ItemSource, chain: dict[str, int | float]) -> None:
    """The folder reads back as written: checksums, counts and chain parameters."""
    try:
        manifest = L.verify_version_files(folder)
        published_chain = L.read_chain_file(folder)
    except ArtifactError as exc:
        raise PublishVerificationError(str(exc)) from None
    if manifest["n_items"] != source.n_items or manifest["term_counts"] != source.term_counts():
        raise PublishVerificationError(f"{folder / L.MANIFEST_FILE} does not read back as written")
    if published_chain != chain:
        raise PublishVerificationError(f"{folder / L.CHAIN_FILE} reads back as {published_chain}, written {chain}")


def activate_item_version(paths: ArtifactPaths, version: str) -> list[str]:
    """Switch ``online/items/CURRENT`` to a staged version; keep only it and the one live before it."""
    store_dir = L.items_store_dir(paths)
    previous = L.read_current_version(store_dir)
    L.write_current_version(store_dir, version)
    return prune_versions(store_dir, version, previous)


def discard_item_version(paths: ArtifactPaths, version: str) -> None:
    """Remove a staged version that will not go live (its Elasticsearch index failed)."""
    store_dir = L.items_store_dir(paths)
    if L.read_current_version(store_dir) != version:
        shutil.rmtree(store_dir / version, ignore_errors=True)


def publish_items_embedded(
    paths: ArtifactPaths, chain: dict[str, int | float], *, version: str | None = None
) -> EmbeddedItemsReport:
    """Stage a self-contained version of the item artifacts and ``chain``, then switch CURRENT to it."""
    version = version or L.new_version()
    previous = L.read_current_version(L.items_store_dir(paths))
    folder, source = stage_item_version(paths, chain, version)
    deleted = activate_item_version(paths, version)
    log.info("embedded items: version %s live (was %s), %d items", version, previous, source.n_items)
    return EmbeddedItemsReport(version, previous, source.n_items, folder / L.MANIFEST_FILE, deleted)
