"""The embedded scorer: ONNX Runtime in-process on the exported ranker.

It loads the served version of ``ml_rec`` in the Triton model repository (what Triton serves: the
newest, or the one a rollback pinned; see ``online_layout.served_model_version``); the training
output ``rank/model/model.onnx`` is never read (a model is served once ``s2_model_to_triton`` has
published it).
One session per worker process, one intra-op thread (the workers and request threads are the
parallelism); ``InferenceSession.run`` is thread-safe. The compose profile uses it as Triton's fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.online_layout import latest_model_path, served_model_version
from data_exchange_center.settings import Settings
from online.backends.base import ReadyStatus
from online.backends.versions import Refreshing

if TYPE_CHECKING:
    from online.backends.user_tower import UserTower


@dataclass(frozen=True)
class OnnxModel:
    version: str
    session: Any  # onnxruntime.InferenceSession

    def score(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """(n,) float32 like probabilities of encoded rows."""
        if len(sparse) == 0:
            return np.zeros(0, np.float32)
        (scores,) = self.session.run([sig.OUTPUT_SCORE], sig.ranker_inputs(sparse, dense))  # (n, 1)
        return np.asarray(scores, dtype=np.float32).reshape(-1)


def load_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ModelLocator:
    """Where the newest model is and what its version is called."""

    def __init__(self, settings: Settings) -> None:
        self.repository = settings.paths.model_repository_dir

    def probe(self) -> str | None:
        version = served_model_version(self.repository)  # the highest, or the one a rollback pinned
        return None if version is None else f"{sig.MODEL_NAME}/{version}"

    def path_of(self, version: str) -> Path:
        path = latest_model_path(self.repository)
        if path is None or f"{sig.MODEL_NAME}/{path.parent.name}" != version:
            raise ArtifactError(f"model version {version} is no longer in {self.repository}")
        return path


def load_model(locator: ModelLocator, version: str) -> OnnxModel:
    return OnnxModel(version, load_session(locator.path_of(version)))


class OnnxScorer:
    """``Scorer`` with ONNX Runtime in-process."""

    name = "onnxruntime"

    def __init__(self, settings: Settings) -> None:
        locator = ModelLocator(settings)
        self.model: Refreshing[OnnxModel] = Refreshing(
            "scorer", locator.probe, lambda version: load_model(locator, version)
        )

    def score(self, sparse: np.ndarray, dense: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        model = self.model.get()
        return model.score(sparse, dense), model.version

    def user_vector(
        self, tower: UserTower, items: np.ndarray, liked: np.ndarray, timeout_s: float
    ) -> tuple[np.ndarray, str]:
        return tower.run(items, liked), f"{sig.USER_TOWER_NAME}@{tower.item_version}"

    def maybe_refresh(self) -> None:
        self.model.maybe_refresh()

    def snapshots(self) -> list[Refreshing[Any]]:
        return [self.model]

    def status(self) -> ReadyStatus:
        loaded = self.model.loaded
        return ReadyStatus(loaded, self.name, self.model.version, "" if loaded else str(self.model.last_error or ""))

    def close(self) -> None:
        pass
