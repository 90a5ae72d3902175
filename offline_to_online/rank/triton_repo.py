"""The ranker's ONNX checks and its Triton model configurations (pure functions).

``check_onnx_model`` refuses a model that does not match ``data_exchange_center.model_signature``
and the feature spec: ``onnx.checker`` (full check), the opset, self-contained weights (no external
data), input/output names, element types, a dynamic batch axis and the feature widths; then one
ONNX Runtime call on a small batch must return ``(batch, 1)`` finite scores.

Triton's configs are ``offline_to_online.triton_config``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import ArtifactError
from offline_to_online.triton_config import DYNAMIC, TensorSpec


def expected_signature(n_sparse: int, n_dense: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [
        TensorSpec(sig.INPUT_SPARSE, "int64", (DYNAMIC, n_sparse)),
        TensorSpec(sig.INPUT_DENSE, "float32", (DYNAMIC, n_dense)),
    ]
    return inputs, [TensorSpec(sig.OUTPUT_SCORE, "float32", (DYNAMIC, 1))]


def _tensor_spec(value_info: object) -> TensorSpec:
    from onnx import helper

    tensor_type = value_info.type.tensor_type  # type: ignore[attr-defined]
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    dims = tuple(d.dim_value if d.HasField("dim_value") else DYNAMIC for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, dtype, dims)  # type: ignore[attr-defined]


def model_signature_of(model: object) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (without initializers) and outputs, sorted by name."""
    graph = model.graph  # type: ignore[attr-defined]
    initializers = {t.name for t in graph.initializer}
    inputs = [_tensor_spec(v) for v in graph.input if v.name not in initializers]
    outputs = [_tensor_spec(v) for v in graph.output]
    return sorted(inputs, key=lambda t: t.name), sorted(outputs, key=lambda t: t.name)


def signature_problems(model: object, n_sparse: int, n_dense: int) -> list[str]:
    """What differs between the model's signature and the expected one ([] when they match)."""
    inputs, outputs = model_signature_of(model)
    want_inputs, want_outputs = expected_signature(n_sparse, n_dense)
    problems = []
    for kind, got, want in (("input", inputs, want_inputs), ("output", outputs, want_outputs)):
        got_by_name = {t.name: t for t in got}
        for expected in want:
            actual = got_by_name.pop(expected.name, None)
            if actual is None:
                problems.append(f"missing {kind} {expected.name!r}")
            elif actual.dtype != expected.dtype or not _shape_matches(actual.shape, expected.shape):
                problems.append(f"{kind} {expected.name!r} is {actual.dtype}{list(actual.shape)}, "
                                f"expected {expected.dtype}{list(expected.shape)} (-1 = dynamic batch)")  # fmt: skip
        problems += [f"unexpected {kind} {name!r}" for name in got_by_name]
    return problems


def _shape_matches(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(actual) != len(expected) or actual[0] != DYNAMIC:
        return False
    return all(a == e or (a == DYNAMIC and e == 1) for a, e in zip(actual[1:], expected[1:], strict=True))


def opset_of(model: object) -> int | None:
    for entry in model.opset_import:  # type: ignore[attr-defined]
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def check_onnx_model(path: Path, n_sparse: int, n_dense: int) -> None:
    """Raise ``ArtifactError`` naming every mismatch; returns only for a servable model."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    if not path.exists():
        raise ArtifactError(f"missing ONNX model {path}: run offline/rank/s2_model_train.py first")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ArtifactError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    problems = signature_problems(model, n_sparse, n_dense)
    if opset_of(model) != sig.ONNX_OPSET:
        problems.append(f"opset {opset_of(model)}, expected {sig.ONNX_OPSET}")
    if any(uses_external_data(t) for t in model.graph.initializer):
        problems.append("weights are stored outside the file (external data): export one self-contained file")
    if problems:
        raise ArtifactError(f"{path} does not match the serving signature: " + "; ".join(problems))
    smoke_run(path, n_sparse, n_dense)


def smoke_run(path: Path, n_sparse: int, n_dense: int, batch: int = 3) -> None:
    """One ONNX Runtime call on zeros must return finite (batch, 1) float32 scores."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        sig.INPUT_SPARSE: np.zeros((batch, n_sparse), dtype=np.int64),
        sig.INPUT_DENSE: np.zeros((batch, n_dense), dtype=np.float32),
    }
    (scores,) = session.run([sig.OUTPUT_SCORE], feeds)
    if scores.shape != (batch, 1) or scores.dtype != np.float32 or not np.isfinite(scores).all():
        raise ArtifactError(
            f"{path}: a batch of {batch} scored as {scores.dtype}{list(scores.shape)}, not finite (batch, 1)"
        )
