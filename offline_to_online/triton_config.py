"""Triton model configurations (``config.pbtxt``) of the two served models, as pure functions.

The batch axis is implicit (``max_batch_size`` > 0), so the dims list the per-row shape only:
``ml_rec``: ``sparse_ids [n_sparse]``, ``dense [n_dense]`` -> ``score [1]``; ``ml_user_tower``:
``recent_items [window]``, ``recent_liked [window]`` -> ``user_vector [dim + 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import ArtifactError

Backend = Literal["onnxruntime", "python"]
DYNAMIC = -1
MAX_QUEUE_DELAY_US = 100
# A request that waited in Triton's queue longer than this (or than the timeout the client sends: the time
# left in its request) is rejected, not run: after a hang the server drops the backlog that no client waits
# for any more instead of working through it while new requests time out behind it.
QUEUE_TIMEOUT_US = 1_000_000
# Model instances per model, on the CPU. With one, requests from concurrent service threads queue behind
# each other (a Python-backend instance is one stub process that runs one request at a time, and a request
# of a few hundred candidates leaves no room in a 512-row batch for a second one): measured on a 2-core
# machine with the ranker and 300 rows per request, one instance served 316 requests/s to 2 concurrent
# clients (below its own sequential 500/s), two instances 859/s (4 clients: 315 vs 1,011/s).
INSTANCES = 2
# Each instance runs this many all-zero requests of this many rows before the model is reported ready (Triton's
# ``model_warmup``): the first request of a fresh Python-backend instance took about 30 ms (ONNX Runtime's first
# run, the stub's shared memory growing) against 2 to 4 ms after, and 6 to 10 ms with the warm-up (the rest is
# the client's connection), so a service that starts beside a fresh Triton does not spend its scorer budget there.
WARMUP_ROWS = 256
WARMUP_RUNS = 2


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64" | "float32" | other numpy names
    shape: tuple[int, ...]  # -1 for a dynamic (symbolic or unknown) dimension


LATEST_POLICY = "version_policy: { latest: { num_versions: 1 } }"


def version_policy(pinned: int | None = None) -> str:
    """Triton's ``version_policy`` line: the latest version, or exactly ``pinned`` (a rollback)."""
    return LATEST_POLICY if pinned is None else f"version_policy: {{ specific: {{ versions: [ {int(pinned)} ] }} }}"


def with_version_policy(config_text: str, pinned: int | None) -> str:
    """``config_text`` with its ``version_policy`` line replaced (what a rollback writes)."""
    lines = config_text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.startswith("version_policy:")]
    if len(hits) != 1:
        raise ArtifactError(f"a Triton config must have one version_policy line, this one has {len(hits)}")
    lines[hits[0]] = version_policy(pinned) + "\n"
    return "".join(lines)


def config_pbtxt(n_sparse: int, n_dense: int, backend: Backend, max_batch_size: int = sig.MAX_BATCH_SIZE) -> str:
    """Triton's ``config.pbtxt`` for ``ml_rec`` (``onnxruntime_onnx`` platform, or the Python backend)."""
    inputs = [TensorSpec(sig.INPUT_SPARSE, "int64", (n_sparse,)), TensorSpec(sig.INPUT_DENSE, "float32", (n_dense,))]
    outputs = [TensorSpec(sig.OUTPUT_SCORE, "float32", (1,))]
    return model_config(sig.MODEL_NAME, inputs, outputs, backend, max_batch_size=max_batch_size)


TOWER_VERSIONS_LOADED = 3  # the served item version's user tower, the one before it (rollback) and one spare


def user_tower_config(window: int, out_dim: int, backend: Backend) -> str:
    """Triton's ``config.pbtxt`` for the vector model's user side (``ml_user_tower``). The service asks for the
    exact version its item version names, so the last ``TOWER_VERSIONS_LOADED`` versions stay loaded."""
    inputs = [
        TensorSpec(sig.USER_TOWER_INPUT_ITEMS, "int64", (window,)),
        TensorSpec(sig.USER_TOWER_INPUT_LIKED, "float32", (window,)),
    ]
    outputs = [TensorSpec(sig.USER_TOWER_OUTPUT, "float32", (out_dim,))]
    return model_config(sig.USER_TOWER_NAME, inputs, outputs, backend, latest=TOWER_VERSIONS_LOADED)


_TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32"}


def _tensor_block(tensors: list[TensorSpec]) -> str:
    entries = [
        f'  {{\n    name: "{t.name}"\n    data_type: {_TRITON_TYPES[t.dtype]}\n'
        f"    dims: [ {', '.join(str(d) for d in t.shape)} ]\n  }}"
        for t in tensors
    ]
    return ",\n".join(entries)


def _warmup_block(inputs: list[TensorSpec]) -> str:
    entries = [
        f'    inputs {{\n      key: "{t.name}"\n      value: {{\n        data_type: {_TRITON_TYPES[t.dtype]}\n'
        f"        dims: [ {', '.join(str(d) for d in t.shape)} ]\n        zero_data: true\n      }}\n    }}"
        for t in inputs
    ]
    return (f'  {{\n    name: "zeros"\n    batch_size: {WARMUP_ROWS}\n    count: {WARMUP_RUNS}\n'
            + "\n".join(entries) + "\n  }")  # fmt: skip


def model_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    backend: Backend,
    max_batch_size: int = sig.MAX_BATCH_SIZE,
    latest: int = 1,
) -> str:
    """A Triton ``config.pbtxt``: the batch axis is implicit, so ``inputs``/``outputs`` list per-row shapes."""
    if max_batch_size < 256:
        raise ValueError(f"max_batch_size must be at least 256, got {max_batch_size}")
    engine = 'platform: "onnxruntime_onnx"' if backend == "onnxruntime" else 'backend: "python"'
    policy = version_policy() if latest == 1 else f"version_policy: {{ latest: {{ num_versions: {latest} }} }}"
    return f"""# Generated by offline_to_online/rank/s2_model_to_triton.py; do not edit.
name: "{name}"
{engine}
max_batch_size: {max_batch_size}
{policy}
input [
{_tensor_block(inputs)}
]
output [
{_tensor_block(outputs)}
]
dynamic_batching {{
  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}
  default_queue_policy {{
    timeout_action: REJECT
    default_timeout_microseconds: {QUEUE_TIMEOUT_US}
    allow_timeout_override: true
  }}
}}
instance_group [
  {{
    count: {INSTANCES}
    kind: KIND_CPU
  }}
]
model_warmup [
{_warmup_block(inputs)}
]
"""
