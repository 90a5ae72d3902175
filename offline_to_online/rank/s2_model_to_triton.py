"""Ranking stage 2: the ONNX ranker into Triton model repositories (a new numbered version per publish).

Reads rank/model/model.onnx and rank/feature_spec.json. Checks the model (onnx.checker, opset, a dynamic
batch axis, inputs and outputs against data_exchange_center/model_signature.py and the spec's widths)
before writing anything, then writes
  model_repository/ml_rec/{config.pbtxt, N/model.onnx}                  platform onnxruntime_onnx
  model_repository_python/ml_rec/{config.pbtxt, N/model.py, N/model.onnx}  backend python (pytriton)
The embedded profile's in-process scorer loads model_repository/ml_rec/<latest N>/model.onnx;
the compose profile's Triton polls model_repository/. Both profiles write both repositories.
"""

from __future__ import annotations

import sys

from offline_to_online.common import run_stage, stage_parser
from offline_to_online.rank.stages import model_to_triton


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__ or "").parse_args(argv)
    return run_stage("s2_model_to_triton", args, model_to_triton)


if __name__ == "__main__":
    sys.exit(main())
