"""Ranking stage 3: check that the served ranker scores real test rows as the trained one does.

Scores at least 1,000 rows of rank/test.parquet (those of rank/model/reference_scores.parquet, the
PyTorch scores written by training) with ONNX Runtime on the published model
(model_repository/ml_rec/<latest>/model.onnx) and, when a Triton URL is given (--triton-url, or
RECSYS_TRITON_URL when the scorer role is triton: --profile compose, or RECSYS_SCORER_BACKEND=triton),
with Triton over gRPC (and over HTTP with
--triton-http-url). Prints a table; exits 4 if any score differs from PyTorch's by more than 1e-5.
"""

from __future__ import annotations

import sys

from offline_to_online.common import run_stage, stage_parser
from offline_to_online.rank.score_check import MIN_ROWS
from offline_to_online.rank.stages import check_offline_and_online


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
