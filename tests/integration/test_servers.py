"""The test-server infrastructure itself, against real servers: Redis (or Valkey) and Triton.

The Triton test builds a tiny model repository: a Python-backend ``model.py`` that runs ONNX
Runtime on a ``model.onnx`` exported here (score = dense @ W), and checks that gRPC and HTTP
answers equal numpy's. If the Triton venv cannot be built (no PyPI), the test fails, it does not
skip: scripts/setup_triton_venv.sh is part of what is tested.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from scripts.native_servers import RedisServer, ServerError, TritonServer, TritonVenv, redis_ping

pytestmark = pytest.mark.integration

N_DENSE = 4
MODEL_NAME = "tiny_scorer"

MODEL_PY = textwrap.dedent(
    '''
    """Minimal Triton Python-backend model: ONNX Runtime on model.onnx (test data)."""
    import os

    import numpy as np
    import onnxruntime as ort
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def execute(self, requests):
            responses = []
            for request in requests:
                dense = pb_utils.get_input_tensor_by_name(request, "dense").as_numpy()
                (score,) = self.session.run(["score"], {"dense": dense.astype(np.float32)})
                out = pb_utils.Tensor("score", score.astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    '''
)

CONFIG_PBTXT = textwrap.dedent(
    f"""
    name: "{MODEL_NAME}"
    backend: "python"
    max_batch_size: 256
    input [
      {{ name: "dense", data_type: TYPE_FP32, dims: [ {N_DENSE} ] }}
    ]
    output [
      {{ name: "score", data_type: TYPE_FP32, dims: [ 1 ] }}
    ]
    dynamic_batching {{ max_queue_delay_microseconds: 100 }}
    instance_group [ {{ count: 1, kind: KIND_CPU }} ]
    """
)


def _export_onnx(path: Path, weights: np.ndarray) -> None:
    """score[-1, 1] = dense[-1, 4] @ W, written with the project's onnx (its default IR/opset)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["dense", "W"], ["score"])],
        "tiny_scorer",
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, [None, N_DENSE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, producer_name="recsys-tests")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture()
def tiny_model_repository(tmp_path: Path) -> tuple[Path, np.ndarray]:
    weights = np.array([[0.5], [-1.25], [2.0], [0.125]], dtype=np.float32)
    repo = tmp_path / "model_repository"
    version_dir = repo / MODEL_NAME / "1"
    version_dir.mkdir(parents=True)
    _export_onnx(version_dir / "model.onnx", weights)
    (version_dir / "model.py").write_text(MODEL_PY)
    (repo / MODEL_NAME / "config.pbtxt").write_text(CONFIG_PBTXT)
    return repo, weights


def test_redis_server_set_get_kill_restart() -> None:
    import redis

    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        client.set("user:1", "profile")
        assert client.get("user:1") == b"profile"

        server.kill()
        assert not server.running
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()

        server.start()
        assert server.running
        assert client.ping() is True
        # same port, same data directory, AOF fsynced on every write: the key survived SIGKILL
        assert client.get("user:1") == b"profile"
        client.close()
        port, workdir = server.port, server.workdir

    assert not redis_ping("127.0.0.1", port)
    assert not workdir.exists()


def test_redis_server_stop_is_graceful_and_idempotent() -> None:
    server = RedisServer(appendonly=False)
    with server:
        pid = server.pid
        assert pid is not None
        server.stop()
        server.stop()
        assert not server.running
        assert not redis_ping("127.0.0.1", server.port)


def test_triton_server_python_backend_onnx(
    triton_venv: TritonVenv, tiny_model_repository: tuple[Path, np.ndarray]
) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    repo, weights = tiny_model_repository
    rng = np.random.default_rng(7)
    dense = rng.normal(size=(200, N_DENSE)).astype(np.float32)
    expected = dense @ weights

    t0 = time.monotonic()
    with TritonServer(repo, venv=triton_venv.root) as server:
        print(f"tritonserver ready in {time.monotonic() - t0:.2f} s (startup_seconds={server.startup_seconds:.2f})")
        assert server.model_ready(MODEL_NAME)

        grpc = grpcclient.InferenceServerClient(url=server.grpc_url)
        assert grpc.is_model_ready(MODEL_NAME)
        g_in = grpcclient.InferInput("dense", list(dense.shape), "FP32")
        g_in.set_data_from_numpy(dense)
        g_res = grpc.infer(MODEL_NAME, [g_in], outputs=[grpcclient.InferRequestedOutput("score")])
        g_score = g_res.as_numpy("score")
        assert g_score is not None and g_score.shape == (200, 1)
        np.testing.assert_allclose(g_score, expected, rtol=1e-6, atol=1e-6)
        grpc.close()

        http = httpclient.InferenceServerClient(url=server.http_url)
        h_in = httpclient.InferInput("dense", list(dense[:17].shape), "FP32")
        h_in.set_data_from_numpy(dense[:17], binary_data=True)
        h_res = http.infer(MODEL_NAME, [h_in], outputs=[httpclient.InferRequestedOutput("score")])
        h_score = h_res.as_numpy("score")
        assert h_score is not None
        np.testing.assert_allclose(h_score, expected[:17], rtol=1e-6, atol=1e-6)
        http.close()

        pid = server.pid
        assert pid is not None
        server.stop()
        assert not server.running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_triton_server_bad_model_fails_with_log_tail(triton_venv: TritonVenv, tmp_path: Path) -> None:
    repo = tmp_path / "broken_repository"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('boom from model.py')\n")
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    server = TritonServer(repo, venv=triton_venv.root, startup_timeout=60)
    with pytest.raises(ServerError, match="boom from model.py"), server:
        pass
    assert not server.running
    assert server.log_path.is_file()  # kept after a failed start, for the error message's sake
    server.close()
    assert not server.workdir.exists()
