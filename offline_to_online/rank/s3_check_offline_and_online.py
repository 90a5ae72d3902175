"""Ranking stage 3: check that the served ranker scores real test rows as the trained one does.

Scores at least 1,000 rows of rank/test.parquet (those of rank/model/reference_scores.parquet, the
PyTorch scores written by training) with ONNX Runtime on the published model
(model_repository/ml_rec/<latest>/model.onnx) and, when a Triton URL is given (--triton-url, or
RECSYS_TRITON_URL when the scorer role is triton: --profile compose, or RECSYS_SCORER_BACKEND=triton),
with Triton over gRPC (and over HTTP with
--triton-http-url). Prints a table; exits 4 if any score differs from PyTorch's by more than 1e-5.
"""

from __future__ import annotations

import logging
import sys

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.online_layout import latest_model_path
from data_exchange_center.settings import Settings
from offline_to_online.common import PublishVerificationError, run_stage, served_by, stage_parser
from offline_to_online.rank.score_check import (
    MIN_ROWS,
    TOLERANCE,
    BackendResult,
    compare,
    format_table,
    load_check_rows,
    onnxruntime_scorer,
    score_in_batches,
    triton_scorer,
)

log = logging.getLogger(__name__)


def check_offline_and_online(
    settings: Settings,
    triton_url: str | None = None,
    triton_http_url: str | None = None,
    n_rows: int = MIN_ROWS,
    connect_attempts: int = 5,
) -> list[BackendResult]:
    """Score the reference rows with every configured backend; raise if any differs beyond 1e-5."""
    paths = settings.paths
    spec = FeatureSpec.load(paths.feature_spec_path)
    model_path = latest_model_path(paths.model_repository_dir)
    if model_path is None:
        raise ArtifactError(f"no published model under {paths.model_repository_dir}: run s2_model_to_triton first")
    rows = load_check_rows(paths, spec, n_rows)
    scorers = {f"onnxruntime ({model_path.parent.name}/model.onnx)": onnxruntime_scorer(model_path)}
    checks_triton = triton_url is None and served_by(
        settings, "scorer", "triton", "s3_check_offline_and_online", "checking ONNX Runtime only"
    )
    grpc_url = triton_url or (settings.triton_url if checks_triton else None)
    if grpc_url:
        scorers[f"triton grpc {grpc_url}"] = triton_scorer(grpc_url, "grpc", connect_attempts)
    if triton_http_url:
        scorers[f"triton http {triton_http_url}"] = triton_scorer(triton_http_url, "http", connect_attempts)
    results = [
        compare(name, score_in_batches(scorer, rows.sparse, rows.dense, sig.MAX_BATCH_SIZE), rows.reference)
        for name, scorer in scorers.items()
    ]
    print(format_table(len(rows.reference), results))
    failed = [r.backend for r in results if not r.ok]
    if failed:
        raise PublishVerificationError(f"scores of {failed} differ from PyTorch's by more than {TOLERANCE:g}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    parser.add_argument(
        "--triton-url", default=None, help="Triton gRPC host:port (default: RECSYS_TRITON_URL on compose)"
    )
    parser.add_argument("--triton-http-url", default=None, help="also check Triton's HTTP API at host:port")
    parser.add_argument("--rows", type=int, default=MIN_ROWS, help="test rows to score (default %(default)s)")
    args = parser.parse_args(argv)
    return run_stage(
        "s3_check_offline_and_online",
        args,
        lambda s: check_offline_and_online(s, args.triton_url, args.triton_http_url, args.rows, args.connect_attempts),
    )


if __name__ == "__main__":
    sys.exit(main())
