"""Write a checked ONNX model into the two Triton model repositories, one new version per publish.

- ``model_repository/<model>/``: ``config.pbtxt`` (``onnxruntime_onnx``) and ``<N>/model.onnx``;
- ``model_repository_python/<model>/``: ``config.pbtxt`` (``backend: "python"``) and
  ``<N>/model.py`` + ``<N>/model.onnx``.

Two models go there: the ranker ``ml_rec`` (``publish_model``) and the vector model's user side
``ml_user_tower`` (``publish_user_tower``, at each item publish: its version number is recorded in the
item version, which the service asks Triton for by number).

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
from offline_to_online.triton_config import TOWER_VERSIONS_LOADED, Backend, config_pbtxt, user_tower_config

log = logging.getLogger(__name__)

PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_backend_model.py")


@dataclass
class TritonPublishReport:
    version: int
    repositories: dict[str, Path]
    deleted: list[Path]


def next_version(repositories: list[Path], model: str = sig.MODEL_NAME) -> int:
    return 1 + max((v for repo in repositories for v in model_versions(repo, model)), default=0)


def write_version(
    repository: Path, version: int, onnx_path: Path, backend: Backend, model: str = sig.MODEL_NAME
) -> Path:
    """Assemble ``<repository>/<model>/<version>/`` in a staging folder and rename it into place."""
    model_dir = repository / model
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


def write_config(repository: Path, config_text: str, model: str = sig.MODEL_NAME) -> Path:
    path = repository / model / "config.pbtxt"
    with atomic_path(path) as tmp:
        tmp.write_text(config_text)
        make_readable(tmp)
    return path


def prune_versions(repository: Path, keep: set[int], model: str = sig.MODEL_NAME) -> list[Path]:
    """Delete every version folder of ``model`` not in ``keep``."""
    doomed = [repository / model / str(v) for v in model_versions(repository, model) if v not in keep]
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
        write_config(repository, config_pbtxt(n_sparse, n_dense, backend))
        deleted += prune_versions(repository, {version} | ({previous} if previous is not None else set()))
        log.info("Triton (%s backend): %s written", backend, folder)
    return TritonPublishReport(version, {b: r for b, r in repositories.items()}, deleted)


def next_user_tower_version(repositories: dict[Backend, Path]) -> int:
    """The number the next ``ml_user_tower`` version gets (one past the newest in any repository)."""
    return next_version(list(repositories.values()), sig.USER_TOWER_NAME)


def publish_user_tower(
    onnx_path: Path, window: int, out_dim: int, repositories: dict[Backend, Path], version: int
) -> None:
    """Write the user side as version ``version`` of ``ml_user_tower`` into each repository (the item
    publish plans the number with ``next_user_tower_version``, records it in the item version, and writes
    the model only once that version is verified).

    The newest ``TOWER_VERSIONS_LOADED`` versions stay (and stay loaded): the served item version's, the
    one before it (an item rollback) and one of an item publish that may not have gone live."""
    model = sig.USER_TOWER_NAME
    for backend, repository in repositories.items():
        folder = write_version(repository, version, onnx_path, backend, model)
        write_config(repository, user_tower_config(window, out_dim, backend), model)
        keep = set(model_versions(repository, model)[-TOWER_VERSIONS_LOADED:])
        prune_versions(repository, keep, model)
        log.info("Triton (%s backend): %s written", backend, folder)
