"""Triton Python-backend model ``ml_rec``: ONNX Runtime on the ``model.onnx`` beside this file.

Copied as ``model.py`` into each version folder of the Python-backend repository by
``offline_to_online/rank/s2_model_to_triton.py``. Same name, inputs and outputs as the
``onnxruntime_onnx`` model, for Triton builds without the ONNX Runtime backend (nvidia-pytriton's).
Requests that Triton's dynamic batcher hands over together are scored in one ONNX Runtime call.
It runs inside Triton's stub (numpy<2 is fine) and imports nothing from this project.
"""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_SPARSE = "sparse_ids"
INPUT_DENSE = "dense"
OUTPUT_SCORE = "score"


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("RECSYS_ORT_THREADS", "1"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        sparse = [pb_utils.get_input_tensor_by_name(r, INPUT_SPARSE).as_numpy() for r in requests]
        dense = [pb_utils.get_input_tensor_by_name(r, INPUT_DENSE).as_numpy() for r in requests]
        feeds = {
            INPUT_SPARSE: np.ascontiguousarray(np.concatenate(sparse), dtype=np.int64),
            INPUT_DENSE: np.ascontiguousarray(np.concatenate(dense), dtype=np.float32),
        }
        (scores,) = self.session.run([OUTPUT_SCORE], feeds)  # (sum of batches, 1)
        bounds = np.cumsum([len(s) for s in sparse])[:-1]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_SCORE, part.astype(np.float32))])
            for part in np.split(scores, bounds)
        ]
