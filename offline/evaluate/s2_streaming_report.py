"""Stage evaluate/2: the streaming protocol on the online holdout (offline), into reports/streaming.json.

Walks every ``--every``-th holdout user's online ratings in time order and, before each positive one,
computes the served list from the published state (static) and from the published state plus the
earlier online ratings applied as events (live); writes next-item HitRate/NDCG/MRR@50 of both, per
experiment variant too (``RECSYS_EXPERIMENT_VARIANTS``). ``online/main/s2_client.py --replay --stream``
compares the running service with this file.
"""

from __future__ import annotations

import logging
import sys

from data_exchange_center.artifacts import write_json
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import load_settings
from data_exchange_center.streaming import streaming_report_path
from offline.common.stage import run_stage, stage_parser
from offline.evaluate.streaming import streaming_report

log = logging.getLogger(__name__)


def write_streaming_report(paths: ArtifactPaths, every: int) -> None:
    report = streaming_report(paths, load_settings({"data_dir": paths.data_dir}), every)
    write_json(report, streaming_report_path(paths))
    for mode in ("static", "live"):
        m = report[mode]
        log.info("%s: HitRate@%d %.4f NDCG %.4f MRR %.4f over %d events", mode, report["k"], m["hit_rate"],
                 m["ndcg"], m["mrr"], m["n_events"])  # fmt: skip
    log.info("live / static HitRate: %s", report["live_over_static_hit_rate"])


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    parser.add_argument("--every", type=int, default=1, help="every N-th holdout user (default 1: all)")
    args = parser.parse_args(argv)
    return run_stage("s2_streaming_report", args, lambda paths: write_streaming_report(paths, args.every))


if __name__ == "__main__":
    sys.exit(main())
