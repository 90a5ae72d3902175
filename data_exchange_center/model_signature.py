"""The ranking model's serving signature, shared by the ONNX export, Triton configs and the scorer."""

from __future__ import annotations

from typing import Any

import numpy as np

MODEL_NAME = "ml_rec"
ONNX_OPSET = 17
INPUT_SPARSE = "sparse_ids"  # int64   (batch, n_sparse): 1-based vocabulary positions, 0 = unknown
INPUT_DENSE = "dense"  # float32 (batch, n_dense): standardized counts and genre flags
OUTPUT_SCORE = "score"  # float32 (batch, 1): probability that the user likes the item (rating > 3)
MAX_BATCH_SIZE = 512

# The vector-recall model's user side (offline/recall/next_item.py), served next to the ranker.
USER_TOWER_NAME = "ml_user_tower"
USER_TOWER_INPUT_ITEMS = "recent_items"  # int64   (batch, window): 1-based item vocabulary positions, 0 = padding
USER_TOWER_INPUT_LIKED = "recent_liked"  # float32 (batch, window): 1 when the user liked that item
USER_TOWER_OUTPUT = "user_vector"  # float32 (batch, dim + 1): inner product with the item vectors = score


def ranker_inputs(sparse: np.ndarray, dense: np.ndarray) -> dict[str, np.ndarray]:
    """The ranker's feeds by input name, in the signature's dtypes, C-contiguous."""
    return {INPUT_SPARSE: np.ascontiguousarray(sparse, np.int64), INPUT_DENSE: np.ascontiguousarray(dense, np.float32)}


def tower_inputs(items: np.ndarray, liked: np.ndarray) -> dict[str, np.ndarray]:
    """The user tower's feeds by input name, in the signature's dtypes, C-contiguous."""
    return {USER_TOWER_INPUT_ITEMS: np.ascontiguousarray(items, np.int64),
            USER_TOWER_INPUT_LIKED: np.ascontiguousarray(liked, np.float32)}  # fmt: skip


TRITON_DTYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def triton_inputs(client_module: Any, arrays: dict[str, np.ndarray]) -> list[Any]:
    """Triton ``InferInput``s of ``arrays`` (input name -> int64 or float32 array, made contiguous), built
    with ``client_module`` (``tritonclient.grpc`` or ``tritonclient.http``: the caller imports it)."""
    inputs = []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        tensor = client_module.InferInput(name, list(array.shape), TRITON_DTYPES[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs
