"""The published ranker on a real tritonserver (pytriton's, Python backend), over gRPC and HTTP."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from data_exchange_center.online_layout import python_model_repository_dir
from data_exchange_center.settings import load_settings
from offline_to_online.common import PublishVerificationError
from offline_to_online.rank import s3_check_offline_and_online
from offline_to_online.rank.score_check import load_check_rows, triton_scorer
from offline_to_online.rank.stages import model_to_triton
from scripts.native_servers import TritonServer, TritonVenv, free_port
from tests.fixtures_artifacts import write_tiny_artifacts

pytestmark = pytest.mark.integration


def test_check_passes_on_triton_grpc_and_http(
    tmp_path: Path, triton_venv: TritonVenv, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    settings = load_settings({"data_dir": tmp_path})
    report = model_to_triton(settings)
    with TritonServer(python_model_repository_dir(tiny.paths), venv=triton_venv.root) as server:
        assert server.model_ready("ml_rec", str(report.version))
        args = ["--data-dir", str(tmp_path), "--triton-url", server.grpc_url, "--triton-http-url", server.http_url]
        assert s3_check_offline_and_online.main(args) == 0
        table = capsys.readouterr().out
        assert f"triton grpc {server.grpc_url}" in table and f"triton http {server.http_url}" in table
        assert table.count(" yes") == 4 and " NO" not in table and "history features" in table

        rows = load_check_rows(tiny.paths, tiny.spec, 400)
        score = triton_scorer(server.grpc_url)
        single = score(rows.sparse, rows.dense)  # (400, 1) in one request
        with ThreadPoolExecutor(4) as pool:  # concurrent requests: the dynamic batcher may merge them
            parts = list(
                pool.map(lambda i: score(rows.sparse[i : i + 100], rows.dense[i : i + 100]), range(0, 400, 100))
            )
        np.testing.assert_array_equal(np.concatenate(parts), single)
        with pytest.raises(PublishVerificationError, match="batch-size must be <= 512"):
            score(np.zeros((513, rows.sparse.shape[1]), np.int64), np.zeros((513, rows.dense.shape[1]), np.float32))
        np.testing.assert_allclose(single[:, 0], rows.reference, atol=1e-5, rtol=0)


def test_a_model_that_differs_from_pytorch_fails_the_check(
    tmp_path: Path, triton_venv: TritonVenv, caplog: pytest.LogCaptureFixture
) -> None:
    tiny = write_tiny_artifacts(tmp_path)
    reference = tiny.paths.model_dir / "reference_scores.parquet"
    import pandas as pd

    frame = pd.read_parquet(reference)
    frame.loc[7, "score"] += 1e-3
    frame.to_parquet(reference)
    model_to_triton(load_settings({"data_dir": tmp_path}))
    server = TritonServer(python_model_repository_dir(tiny.paths), venv=triton_venv.root)
    with server, caplog.at_level(logging.ERROR):
        assert s3_check_offline_and_online.main(["--data-dir", str(tmp_path), "--triton-url", server.grpc_url]) == 4
    assert "differs from PyTorch's by more than 1e-05" in caplog.text


def test_unreachable_triton_is_one_line_and_exit_3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_tiny_artifacts(tmp_path)
    model_to_triton(load_settings({"data_dir": tmp_path}))
    url = f"127.0.0.1:{free_port()}"
    args = ["--data-dir", str(tmp_path), "--profile", "compose", "--connect-attempts", "1"]
    with caplog.at_level(logging.ERROR):
        assert s3_check_offline_and_online.main([*args, "--triton-url", url]) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"cannot reach Triton (grpc) at {url}" in errors[0] and "RECSYS_TRITON_URL" in errors[0]
