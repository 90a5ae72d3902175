"""Export a PyTorch module as one self-contained ONNX file with a dynamic batch axis (the serving form)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import atomic_path


def export_onnx(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], output_name: str, path: Path
) -> Path:
    """Write ``module(*example)`` to ``path`` atomically: opset ``model_signature.ONNX_OPSET``, the given
    input and output names, axis 0 of every input and of the output named ``batch`` (dynamic)."""
    module.eval()
    batch_axis = {0: "batch"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the TorchScript exporter: the torch.export-based one needs onnxscript, which the stack does not ship
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            example,
            str(tmp),
            dynamo=False,
            opset_version=sig.ONNX_OPSET,
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes={name: batch_axis for name in [*input_names, output_name]},
        )
    return path
