"""Offline == online: score real test rows with each serving backend and compare with PyTorch.

The same for the vector model's user side: the users of ``recall/vector_model/reference_vectors.parquet``
(PyTorch vectors written by the vector stage) are encoded from their seen items as the service encodes
them, and run through the served item version's ``user_tower.onnx`` by ONNX Runtime, and through Triton's
``ml_user_tower`` at the version the item version names.

And for the ranker's history features: the service computes those of a user with live events from the
user's published timeline (seen items, labels, ratings) with ``data_exchange_center.user_history``;
over the offline timeline of a sample of users that must give the published feature row, encoded.

The reference is ``rank/model/reference_scores.parquet`` (``row`` int64: position in rank/test.parquet,
``score`` float32), written by the training stage with PyTorch. The rows are encoded with the feature
spec exactly as the online side does (``encode_users`` + ``encode_items`` + ``combine_features``) and
scored by ONNX Runtime on the published model, and by Triton over gRPC (and HTTP) when configured.
This module imports neither torch nor offline/.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data_exchange_center import model_signature as sig
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError, read_npz, read_parquet, read_parquet_blocks
from data_exchange_center.feature_spec import FeatureSpec, combine_features, encode_recent_items
from data_exchange_center.online_layout import (
    ITEM_VECTORS_FILE,
    USER_TOWER_FILE,
    current_version_dir,
    items_store_dir,
    read_user_tower_args,
)
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.user_history import encoded_history_row, table_rows
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
    tolerance: float = TOLERANCE
    reference: str = "PyTorch's"  # what the values are compared with (in the failure message)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def load_check_rows(paths: ArtifactPaths, spec: FeatureSpec, n_rows: int = MIN_ROWS) -> CheckRows:
    """The first ``n_rows`` reference rows (all of them when the test split is smaller), encoded."""
    reference = read_parquet(paths.reference_scores_path, (REFERENCE_ROW, S.SCORE))
    if not paths.rank_test_path.exists():
        raise ArtifactError(f"missing artifact {paths.rank_test_path}: run offline/rank/s1_feature_engi.py")
    n_test = pq.ParquetFile(paths.rank_test_path).metadata.num_rows
    wanted = min(n_rows, n_test)
    if len(reference) < wanted:
        raise ArtifactError(
            f"{paths.reference_scores_path} has {len(reference)} rows, the check needs {wanted}: "
            "re-run offline/rank/s2_model_train.py"
        )
    reference = reference.head(wanted)
    positions = reference[REFERENCE_ROW].to_numpy(np.int64)
    if positions.min(initial=0) < 0 or positions.max(initial=0) >= n_test:
        raise ArtifactError(f"{paths.reference_scores_path} names rows outside rank/test.parquet ({n_test} rows)")
    head = next(read_parquet_blocks(paths.rank_test_path, [positions.max(initial=-1) + 1], list(spec.row_columns)))
    rows = head.iloc[positions].reset_index(drop=True)  # the test table's first rows only: it may be large
    evidence = spec.reference_evidence(positions)
    sparse, dense = combine_features(spec.encode_users(rows), spec.encode_items(rows), evidence)
    return CheckRows(sparse, dense, reference[S.SCORE].to_numpy(np.float32))


def compare(backend: str, scores: np.ndarray, reference: np.ndarray, tolerance: float = TOLERANCE) -> BackendResult:
    """Largest and mean absolute difference over every value (scores (n,) or (n, 1); vectors (n, dim))."""
    diff = np.abs(scores.astype(np.float64).reshape(-1) - reference.astype(np.float64).reshape(-1))
    if not np.isfinite(diff).all():
        return BackendResult(backend, len(reference), math.inf, math.inf, tolerance)
    return BackendResult(
        backend, len(reference), float(diff.max(initial=0.0)), float(diff.mean()) if len(diff) else 0.0, tolerance
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
        return np.asarray(session.run([sig.OUTPUT_SCORE], sig.ranker_inputs(sparse, dense))[0])

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
        inputs = sig.triton_inputs(client_module, sig.ranker_inputs(sparse, dense))
        outputs = [client_module.InferRequestedOutput(sig.OUTPUT_SCORE)]
        try:
            result = client.infer(sig.MODEL_NAME, inputs, outputs=outputs)
        except InferenceServerException as exc:
            if "unavailable" in str(exc.status() or "").lower() or "connect" in str(exc).lower():
                raise BackendUnavailable(f"Triton ({protocol})", url, exc, TRITON_HINT) from None
            raise PublishVerificationError(f"Triton at {url} refused a request: {exc.message()}") from None
        return np.asarray(result.as_numpy(sig.OUTPUT_SCORE))

    return score


TOWER_TOLERANCE = 1e-4  # user vectors have dim + 1 entries of a few units; PyTorch vs ONNX Runtime ~2e-6


@dataclass(frozen=True)
class TowerRows:
    items: np.ndarray  # (n, window) int64
    liked: np.ndarray  # (n, window) float32
    reference: np.ndarray  # (n, dim) float32 PyTorch vectors
    onnx_path: Path  # the served item version's copy
    triton_version: int | None


def load_tower_rows(paths: ArtifactPaths) -> TowerRows | None:
    """The reference users encoded for the served item version's tower; None when there is no tower."""
    version_dir = current_version_dir(items_store_dir(paths))
    args = read_user_tower_args(version_dir) if version_dir is not None else None
    if version_dir is None or args is None or not paths.user_tower_reference_path.exists():
        return None
    reference = read_parquet(paths.user_tower_reference_path, (S.USER_ID, S.VECTORS))
    seen = read_parquet(paths.user_seen_path, (S.USER_ID, S.ITEMS, S.LABELS)).set_index(S.USER_ID)
    missing = np.setdiff1d(reference[S.USER_ID].to_numpy(), seen.index.to_numpy())
    if len(missing):
        raise ArtifactError(f"{paths.user_tower_reference_path} names users without seen items: {missing[:5].tolist()}")
    vocab = read_npz(version_dir / ITEM_VECTORS_FILE, (S.VECTOR_IDS,))[S.VECTOR_IDS].astype(np.int64)
    rows = seen.loc[reference[S.USER_ID].to_numpy()]
    encoded = [encode_recent_items(np.asarray(i), np.asarray(lab), vocab, args.window)
               for i, lab in zip(rows[S.ITEMS], rows[S.LABELS], strict=True)]  # fmt: skip
    return TowerRows(
        np.concatenate([e[0] for e in encoded]),
        np.concatenate([e[1] for e in encoded]),
        np.stack(reference[S.VECTORS].to_numpy()).astype(np.float32),
        version_dir / USER_TOWER_FILE,
        args.triton_version,
    )


def onnxruntime_tower(onnx_path: Path) -> Scorer:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run(items: np.ndarray, liked: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([sig.USER_TOWER_OUTPUT], sig.tower_inputs(items, liked))[0])

    return run


def triton_tower(url: str, version: int, attempts: int = 5) -> Scorer:
    """``ml_user_tower`` at ``version`` over Triton's gRPC API, once it is ready."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=url)

    def ready() -> None:
        if not client.is_model_ready(sig.USER_TOWER_NAME, str(version)):
            raise InferenceServerException(f"model {sig.USER_TOWER_NAME} version {version} is not ready")

    errors = (InferenceServerException, ConnectionError, OSError)
    retry_startup(ready, backend="Triton (grpc)", address=url, hint=TRITON_HINT, errors=errors, attempts=attempts)

    def run(items: np.ndarray, liked: np.ndarray) -> np.ndarray:
        inputs = sig.triton_inputs(grpcclient, sig.tower_inputs(items, liked))
        outputs = [grpcclient.InferRequestedOutput(sig.USER_TOWER_OUTPUT)]
        result = client.infer(sig.USER_TOWER_NAME, inputs, model_version=str(version), outputs=outputs)
        return np.asarray(result.as_numpy(sig.USER_TOWER_OUTPUT))

    return run


HISTORY_TOLERANCE = 1e-6  # encoded float32 features: the same formulas give the same bits


def check_history_features(paths: ArtifactPaths, spec: FeatureSpec, n_users: int = MIN_ROWS) -> BackendResult | None:
    """The history features of a seeded sample of users computed from their seen timeline (what the service
    does after live events) against the serving feature table, both encoded; None when the spec's user
    fields are not all history features or the seen lists carry no ratings."""
    seen = read_parquet(paths.user_seen_path, (S.USER_ID, S.ITEMS, S.LABELS))
    if S.RATINGS not in seen.columns:
        return None
    users = read_parquet(paths.user_features_path, (S.USER_ID,)).set_index(S.USER_ID, drop=False)
    items = read_parquet(paths.item_features_path, (S.ITEM_ID,)).sort_values(S.ITEM_ID)
    item_ids, item_dense = items[S.ITEM_ID].to_numpy(), spec.encode_items(items)[1]
    seen = seen[seen[S.USER_ID].isin(users.index)]
    sample = seen.iloc[np.sort(np.random.default_rng(0).permutation(len(seen))[:n_users])]
    expected = spec.encode_users(users.loc[sample[S.USER_ID]])[1]  # (n, m_u)
    actual = np.empty_like(expected)
    for row, (items_of, labels, ratings) in enumerate(zip(sample[S.ITEMS], sample[S.LABELS], sample[S.RATINGS],
                                                          strict=True)):  # fmt: skip
        flags = table_rows(item_ids, item_dense, np.asarray(items_of))
        encoded = encoded_history_row(spec, np.asarray(labels), np.asarray(ratings), flags)
        if encoded is None:
            return None
        actual[row] = encoded[0]
    result = compare("history features (user_history)", actual, expected, HISTORY_TOLERANCE)
    return dataclasses.replace(result, reference="the feature table's rows")


def format_table(reference_rows: int, results: list[BackendResult], reference: str = "reference_scores") -> str:
    lines = [
        f"{'backend':<34} {'rows':>6} {'max abs diff':>13} {'mean abs diff':>14}  ok",
        f"{f'pytorch ({reference})':<34} {reference_rows:>6} {'-':>13} {'-':>14}  -",
    ]
    for r in results:
        lines.append(
            f"{r.backend:<34} {r.n_rows:>6} {r.max_abs_diff:>13.3e} {r.mean_abs_diff:>14.3e}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
