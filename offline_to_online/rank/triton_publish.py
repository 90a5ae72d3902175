"""Write the checked ONNX ranker into the two Triton model repositories, one new version per publish.

- ``model_repository/ml_rec/``: ``config.pbtxt`` (``onnxruntime_onnx``) and ``<N>/model.onnx``;
- ``model_repository_python/ml_rec/``: ``config.pbtxt`` (``backend: "python"``) and
  ``<N>/model.py`` + ``<N>/model.onnx``.

A version folder is assembled in a staging folder beside the repository (outside it, so Triton never
sees it as a model) and renamed into place; ``config.pbtxt`` is then replaced atomically (policy
``latest``: a pin left by a rollback ends here). ``N`` is one more than the highest version in either
repository, so both carry the same number. Only the new version and the one served before it stay
(Triton serves the latest; the one before is what ``s4_rollback --component model`` pins).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import atomic_path
from data_exchange_center.online_layout import model_versions, served_model_version
from offline_to_online.common import make_readable
from offline_to_online.rank.triton_repo import Backend, config_pbtxt

log = logging.getLogger(__name__)

PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_backend_model.py")


@dataclass
class TritonPublishReport:
    version: int
    repositories: dict[str, Path]
    deleted: list[Path]


def next_version(repositories: list[Path]) -> int:
    return 1 + max((v for repo in repositories for v in model_versions(repo)), default=0)


def write_version(repository: Path, version: int, onnx_path: Path, backend: Backend) -> Path:
    """Assemble ``<repository>/ml_rec/<version>/`` in a staging folder and rename it into place."""
    model_dir = repository / sig.MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = repository.parent / f".{repository.name}.staging-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(onnx_path, staging / "model.onnx")
        if backend == "python":
            shutil.copyfile(PYTHON_MODEL_SOURCE, staging / "model.py")
        target = model_dir / str(version)
        if target.exists():
            raise FileExistsError(f"{target} exists: another publish is running")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_config(repository: Path, n_sparse: int, n_dense: int, backend: Backend) -> Path:
    path = repository / sig.MODEL_NAME / "config.pbtxt"
    with atomic_path(path) as tmp:
        tmp.write_text(config_pbtxt(n_sparse, n_dense, backend))
        make_readable(tmp)
    return path


def prune_versions(repository: Path, keep: set[int]) -> list[Path]:
    """Delete every version folder not in ``keep`` (the new version and the one served before it)."""
    doomed = [repository / sig.MODEL_NAME / str(v) for v in model_versions(repository) if v not in keep]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


def remove_staging_leftovers(repository: Path) -> None:
    for leftover in repository.parent.glob(f".{repository.name}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def publish_model(
    onnx_path: Path, n_sparse: int, n_dense: int, repositories: dict[Backend, Path]
) -> TritonPublishReport:
    """Write a new version of the (already checked) model into each repository, then its config."""
    version = next_version(list(repositories.values()))
    deleted: list[Path] = []
    for backend, repository in repositories.items():
        remove_staging_leftovers(repository)
        previous = served_model_version(repository)
        folder = write_version(repository, version, onnx_path, backend)
        write_config(repository, n_sparse, n_dense, backend)
        deleted += prune_versions(repository, {version} | ({previous} if previous is not None else set()))
        log.info("Triton (%s backend): %s written", backend, folder)
    return TritonPublishReport(version, {b: r for b, r in repositories.items()}, deleted)
