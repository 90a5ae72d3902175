"""The ranking model's serving signature, shared by the ONNX export, Triton configs and the scorer."""

from __future__ import annotations

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
