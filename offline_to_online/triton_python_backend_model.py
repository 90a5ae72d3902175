"""Triton Python-backend model: ONNX Runtime on the ``model.onnx`` beside this file.

Copied as ``model.py`` into each version folder of the Python-backend repository, for the ranker
``ml_rec`` (by ``offline_to_online/rank/s2_model_to_triton.py``) and the vector model's user side
``ml_user_tower`` (by the item publish, ``offline_to_online/recall/s2_item_to_es.py``). The input and
output names come from the model's ``config.pbtxt``, so the same file serves both with the same names,
inputs and outputs as the ``onnxruntime_onnx`` models, for Triton builds without the ONNX Runtime backend
(nvidia-pytriton's). Requests that Triton's dynamic batcher hands over together run in one ONNX Runtime
call. It runs inside Triton's stub (numpy<2 is fine) and imports nothing from this project.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

NUMPY_TYPES = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [(t["name"], NUMPY_TYPES[t["data_type"]]) for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("RECSYS_ORT_THREADS", "1"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        feeds = {}
        for name, dtype in self.inputs:
            parts = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            feeds[name] = np.ascontiguousarray(np.concatenate(parts), dtype=dtype)
        sizes = [len(pb_utils.get_input_tensor_by_name(r, self.inputs[0][0]).as_numpy()) for r in requests]
        results = self.session.run(self.outputs, feeds)  # each (sum of batches, ...)
        bounds = np.cumsum(sizes)[:-1]
        split = {name: np.split(result, bounds) for name, result in zip(self.outputs, results, strict=True)}
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, parts[i].astype(np.float32)) for name, parts in split.items()]
            )
            for i in range(len(requests))
        ]
