"""Publish the item index for the embedded profile: the item artifacts themselves, pinned by a manifest.

The in-process index (``data_exchange_center.item_index``) searches the recall artifacts directly, so
there is nothing to copy. Publishing checks the artifacts (``load_item_source``), records what they
are in ``online/items/<version>/manifest.json`` (relative path, size and sha256 of each file, the
item count, vector dimension and per-term counts), reads that back against the files, and switches
``online/items/CURRENT``. A server can compare the manifest's checksums with the files it loads.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_exchange_center import online_layout as L
from data_exchange_center.artifacts import read_json, write_json
from data_exchange_center.paths import ArtifactPaths
from offline_to_online.common import PublishVerificationError, make_readable
from offline_to_online.recall.embedded_users import TMP_PREFIX, prune_versions, remove_temporary_folders
from offline_to_online.recall.item_source import ItemSource

log = logging.getLogger(__name__)


@dataclass
class EmbeddedItemsReport:
    version: str
    previous: str | None
    n_items: int
    manifest_path: Path


def item_artifact_paths(paths: ArtifactPaths) -> list[Path]:
    return [paths.item_terms_path, paths.item_vectors_path, paths.popularity_path, paths.item_neighbors_path]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def items_manifest(paths: ArtifactPaths, source: ItemSource, version: str) -> dict[str, Any]:
    files = {
        str(p.relative_to(paths.data_dir)): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
        for p in item_artifact_paths(paths)
    }
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


def verify_manifest(paths: ArtifactPaths, manifest: dict[str, Any]) -> None:
    """Each listed file still has the recorded size and checksum."""
    for relative, recorded in manifest["files"].items():
        path = paths.data_dir / relative
        if not path.exists() or sha256_of(path) != recorded["sha256"]:
            raise PublishVerificationError(f"{path} changed while it was being published: re-run the stage")


def publish_items_embedded(
    paths: ArtifactPaths, source: ItemSource, *, version: str | None = None
) -> EmbeddedItemsReport:
    """Write the manifest as a new version, read it back against the files, switch CURRENT."""
    store_dir = L.items_store_dir(paths)
    version = version or L.new_version()
    previous = L.read_current_version(store_dir)
    remove_temporary_folders(store_dir)
    tmp_dir = store_dir / f"{TMP_PREFIX}{version}"
    tmp_dir.mkdir(parents=True)
    try:
        make_readable(write_json(items_manifest(paths, source, version), tmp_dir / L.MANIFEST_FILE))
        manifest = read_json(tmp_dir / L.MANIFEST_FILE)
        verify_manifest(paths, manifest)
        if manifest["n_items"] != source.n_items or manifest["term_counts"] != source.term_counts():
            raise PublishVerificationError(f"{tmp_dir / L.MANIFEST_FILE} does not read back as written")
        tmp_dir.rename(store_dir / version)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    L.write_current_version(store_dir, version)
    prune_versions(store_dir, version, keep_previous=1)
    log.info("embedded items: version %s live (was %s), %d items", version, previous, source.n_items)
    return EmbeddedItemsReport(version, previous, source.n_items, store_dir / version / L.MANIFEST_FILE)
