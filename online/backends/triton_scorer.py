"""The compose profile's scorer: Triton Inference Server over gRPC (models ``ml_rec`` and ``ml_user_tower``).

Triton's Python client is not thread-safe, so each request thread gets its own client (a
``threading.local``), created once per thread and kept. Each call carries the request's time budget
(``client_timeout``, and the same as Triton's queue timeout); rows go in batches of at most
``MAX_BATCH_SIZE``. The reply names the model version that answered, which the response reports. When
Triton is down the chain falls back to ONNX Runtime in-process on the same model (``online.backends.onnx_scorer``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from data_exchange_center import model_signature as sig
from data_exchange_center.settings import Settings
from online.backends.base import ReadyStatus
from online.backends.versions import Refreshing

if TYPE_CHECKING:
    from online.backends.user_tower import UserTower

# gRPC waits up to 120 s (growing from 1 s) before it reconnects to a server that went away; a restarted
# Triton is used again within a second instead. Every call has its own deadline (``client_timeout``).
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def queue_timeout_us(timeout_s: float) -> int:
    """The server-side timeout of a request (microseconds): once the client has given up, Triton rejects it
    from its queue instead of running it (``default_queue_policy`` in the model configs)."""
    return max(1, int(timeout_s * 1_000_000))


class TritonScorer:
    """``Scorer`` over Triton's gRPC API."""

    name = "triton"

    def __init__(self, settings: Settings) -> None:
        self.url = self.server = settings.triton_url  # the server this role calls
        self.status_timeout_s = max(settings.backend_timeout_ms / 1000, 1.0)
        self._local = threading.local()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.grpc as grpcclient

            client = self._local.client = grpcclient.InferenceServerClient(url=self.url, channel_args=CHANNEL_ARGS)
        return client

    def score(self, sparse: np.ndarray, dense: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        parts, version = [], ""
        for start in range(0, len(sparse), sig.MAX_BATCH_SIZE):
            stop = start + sig.MAX_BATCH_SIZE
            scores, version = self._infer(sparse[start:stop], dense[start:stop], timeout_s)
            parts.append(scores)
        scores = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return scores, f"{sig.MODEL_NAME}/{version}"

    def _infer(self, sparse: np.ndarray, dense: np.ndarray, timeout_s: float) -> tuple[np.ndarray, str]:
        result = self._run(sig.MODEL_NAME, "", sig.ranker_inputs(sparse, dense), sig.OUTPUT_SCORE, timeout_s)
        scores = np.asarray(result.as_numpy(sig.OUTPUT_SCORE), dtype=np.float32).reshape(-1)
        return scores, str(result.get_response().model_version)

    def _run(self, model: str, version: str, arrays: dict[str, np.ndarray], output: str, timeout_s: float) -> Any:
        """One inference of ``model`` (``version``; "" = the newest), bounded by ``timeout_s`` on both sides."""
        import tritonclient.grpc as grpcclient

        inputs = sig.triton_inputs(grpcclient, arrays)
        outputs = [grpcclient.InferRequestedOutput(output)]
        return self._client().infer(model, inputs, model_version=version, outputs=outputs, client_timeout=timeout_s,
                                    timeout=queue_timeout_us(timeout_s))  # fmt: skip

    def user_vector(
        self, tower: UserTower, items: np.ndarray, liked: np.ndarray, timeout_s: float
    ) -> tuple[np.ndarray, str]:
        """``ml_user_tower`` at the version the item version names (Triton keeps the last few loaded)."""
        version = tower.args.triton_version
        if version is None:
            raise LookupError(f"item version {tower.item_version} names no Triton version of {sig.USER_TOWER_NAME}")
        result = self._run(sig.USER_TOWER_NAME, str(version), sig.tower_inputs(items, liked), sig.USER_TOWER_OUTPUT,
                           timeout_s)  # fmt: skip
        vectors = np.asarray(result.as_numpy(sig.USER_TOWER_OUTPUT), dtype=np.float32)
        return vectors, f"{sig.USER_TOWER_NAME}/{version}"

    def maybe_refresh(self) -> None:
        pass  # Triton loads new versions itself; every reply names the version that answered

    def snapshots(self) -> list[Refreshing[Any]]:
        return []

    def status(self) -> ReadyStatus:
        try:
            client = self._client()
            if not client.is_model_ready(sig.MODEL_NAME, client_timeout=self.status_timeout_s):
                return ReadyStatus(False, self.name, None, f"model {sig.MODEL_NAME} is not ready")
            metadata = client.get_model_metadata(sig.MODEL_NAME, client_timeout=self.status_timeout_s)
        except Exception as exc:
            return ReadyStatus(False, self.name, None, f"{type(exc).__name__}: {str(exc)[:200]}")
        versions = sorted(metadata.versions, key=int)
        return ReadyStatus(True, self.name, f"{sig.MODEL_NAME}/{versions[-1]}" if versions else None)

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
