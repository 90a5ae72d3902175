"""Offline == online: score real test rows with each serving backend and compare with PyTorch.

The reference is ``rank/model/reference_scores.parquet`` (``row`` int64: position in rank/test.parquet,
``score`` float32), written by the training stage with PyTorch. The rows are encoded with the feature
spec exactly as the online side does (``encode_users`` + ``encode_items`` + ``combine_features``) and
scored by ONNX Runtime on the published model, and by Triton over gRPC (and HTTP) when configured.
This module imports neither torch nor offline/.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_exchange_center import model_signature as sig
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_parquet
from data_exchange_center.feature_spec import FeatureSpec, combine_features
from data_exchange_center.paths import ArtifactPaths
from offline_to_online.common import BackendUnavailable, PublishVerificationError, retry_startup

REFERENCE_ROW = "row"
MIN_ROWS = 1000
TOLERANCE = 1e-5
TRITON_HINT = "check that Triton runs there with model ml_rec loaded (make up SERVICES=triton) and RECSYS_TRITON_URL"

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CheckRows:
    sparse: np.ndarray  # (n, n_sparse) int64
    dense: np.ndarray  # (n, n_dense) float32
    reference: np.ndarray  # (n,) float32 PyTorch scores


@dataclass(frozen=True)
class BackendResult:
    backend: str
    n_rows: int
    max_abs_diff: float
    mean_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE


def load_check_rows(paths: ArtifactPaths, spec: FeatureSpec, n_rows: int = MIN_ROWS) -> CheckRows:
    """The first ``n_rows`` reference rows (all of them when the test split is smaller), encoded."""
    reference = read_parquet(paths.reference_scores_path, (REFERENCE_ROW, S.SCORE))
    test = read_parquet(paths.rank_test_path, tuple(spec.columns))
    wanted = min(n_rows, len(test))
    if len(reference) < wanted:
        raise ArtifactError(
            f"{paths.reference_scores_path} has {len(reference)} rows, the check needs {wanted}: "
            "re-run offline/rank/s2_model_train.py"
        )
    reference = reference.head(wanted)
    positions = reference[REFERENCE_ROW].to_numpy(np.int64)
    if positions.min(initial=0) < 0 or positions.max(initial=0) >= len(test):
        raise ArtifactError(f"{paths.reference_scores_path} names rows outside rank/test.parquet ({len(test)} rows)")
    rows = test.iloc[positions].reset_index(drop=True)
    sparse, dense = combine_features(spec.encode_users(rows), spec.encode_items(rows))
    return CheckRows(sparse, dense, reference[S.SCORE].to_numpy(np.float32))


def compare(backend: str, scores: np.ndarray, reference: np.ndarray) -> BackendResult:
    diff = np.abs(scores.astype(np.float64).reshape(-1) - reference.astype(np.float64))
    if not np.isfinite(diff).all():
        return BackendResult(backend, len(reference), math.inf, math.inf)
    return BackendResult(
        backend, len(reference), float(diff.max(initial=0.0)), float(diff.mean()) if len(diff) else 0.0
    )


def score_in_batches(score_batch: Scorer, sparse: np.ndarray, dense: np.ndarray, batch_size: int) -> np.ndarray:
    parts = [
        score_batch(sparse[i : i + batch_size], dense[i : i + batch_size]) for i in range(0, len(sparse), batch_size)
    ]
    return np.concatenate(parts).reshape(-1).astype(np.float32)


def onnxruntime_scorer(model_path: Path) -> Scorer:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def score(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        feeds = {sig.INPUT_SPARSE: np.ascontiguousarray(sparse), sig.INPUT_DENSE: np.ascontiguousarray(dense)}
        return np.asarray(session.run([sig.OUTPUT_SCORE], feeds)[0])

    return score


def triton_scorer(url: str, protocol: str = "grpc", attempts: int = 5) -> Scorer:
    """A scorer over Triton's gRPC or HTTP API, once the server and model ``ml_rec`` are ready."""
    if protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module  # type: ignore[no-redef]
    from tritonclient.utils import InferenceServerException

    client = client_module.InferenceServerClient(url=url)

    def ready() -> None:
        if not client.is_model_ready(sig.MODEL_NAME):
            raise InferenceServerException(f"model {sig.MODEL_NAME} is not ready")

    errors = (InferenceServerException, ConnectionError, OSError)
    retry_startup(
        ready, backend=f"Triton ({protocol})", address=url, hint=TRITON_HINT, errors=errors, attempts=attempts
    )

    def score(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        inputs = [
            client_module.InferInput(sig.INPUT_SPARSE, list(sparse.shape), "INT64"),
            client_module.InferInput(sig.INPUT_DENSE, list(dense.shape), "FP32"),
        ]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(sparse, dtype=np.int64))
        inputs[1].set_data_from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
        outputs = [client_module.InferRequestedOutput(sig.OUTPUT_SCORE)]
        try:
            result = client.infer(sig.MODEL_NAME, inputs, outputs=outputs)
        except InferenceServerException as exc:
            if "unavailable" in str(exc.status() or "").lower() or "connect" in str(exc).lower():
                raise BackendUnavailable(f"Triton ({protocol})", url, exc, TRITON_HINT) from None
            raise PublishVerificationError(f"Triton at {url} refused a request: {exc.message()}") from None
        return np.asarray(result.as_numpy(sig.OUTPUT_SCORE))

    return score


def format_table(reference_rows: int, results: list[BackendResult]) -> str:
    lines = [
        f"{'backend':<34} {'rows':>6} {'max abs diff':>13} {'mean abs diff':>14}  ok",
        f"{'pytorch (reference_scores)':<34} {reference_rows:>6} {'-':>13} {'-':>14}  -",
    ]
    for r in results:
        lines.append(
            f"{r.backend:<34} {r.n_rows:>6} {r.max_abs_diff:>13.3e} {r.mean_abs_diff:>14.3e}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
