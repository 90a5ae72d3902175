"""Benchmark the offline stages: wall time and peak memory of each, as separate processes.

    python scripts/bench_offline.py --raw-dir ../shared/datasets/ml-1m          # ML-1M
    python scripts/bench_offline.py --dataset synthetic --n-ratings 4000000     # scale: any size
    python scripts/bench_offline.py --stages s1_data_split s2_term_trans s1_feature_engi --repeat 3

Each stage runs in its own process (``python -m <module>``) and is measured with ``os.wait4``, so peak
memory is that stage's own maximum resident set. With ``--repeat N`` the fast stages run N times and
the median is reported. Results are printed as a table and written to
``$RECSYS_DATA_DIR/benchmarks/offline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = {
    "s0_fetch_data": "offline.preprocess.s0_fetch_data",
    "s1_data_split": "offline.preprocess.s1_data_split",
    "s2_term_trans": "offline.preprocess.s2_term_trans",
    "s1_term_recall": "offline.recall.s1_term_recall",
    "s2_vector_recall": "offline.recall.s2_vector_recall",
    "s3_item_to_item": "offline.recall.s3_item_to_item",
    "s1_feature_engi": "offline.rank.s1_feature_engi",
    "s2_model_train": "offline.rank.s2_model_train",
}
FAST_GROUP = ("s1_data_split", "s2_term_trans", "s1_term_recall", "s1_feature_engi")  # the <= 15 s goal


def run_stage(module: str, args: list[str], data_dir: Path) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one stage process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", module, "--data-dir", str(data_dir), "--quiet", *args])
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{module} failed with exit code {os.waitstatus_to_exitcode(status)}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--raw-dir", type=Path, default=None)
    parser.add_argument("--n-users", type=int, default=6040)
    parser.add_argument("--n-items", type=int, default=3706)
    parser.add_argument("--n-ratings", type=int, default=1_000_209)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each fast stage (median reported)")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="recsys_bench_"))
    fetch_args = ["--dataset", args.dataset]
    if args.raw_dir:
        fetch_args += ["--raw-dir", str(args.raw_dir)]
    if args.dataset == "synthetic":
        fetch_args += [
            "--n-users",
            str(args.n_users),
            "--n-items",
            str(args.n_items),
            "--n-ratings",
            str(args.n_ratings),
        ]
    results: dict[str, dict[str, float]] = {}
    for name in args.stages:
        extra = fetch_args if name == "s0_fetch_data" else []
        repeat = args.repeat if name in FAST_GROUP else 1
        runs = [run_stage(STAGES[name], extra, data_dir) for _ in range(repeat)]
        results[name] = {
            "wall_s_median": round(statistics.median(r[0] for r in runs), 3),
            "peak_mib": round(max(r[1] for r in runs), 1),
            "runs": repeat,
        }
        print(f"{name:18s} {results[name]['wall_s_median']:9.2f} s  {results[name]['peak_mib']:8.0f} MiB", flush=True)
    fast = [results[s] for s in FAST_GROUP if s in results]
    if fast:
        total = sum(r["wall_s_median"] for r in fast)
        peak = max(r["peak_mib"] for r in fast)
        print(
            f"{'split+terms+term recall+features':34s} {total:.2f} s, peak {peak:.0f} MiB (goal <= 15 s, <= 1536 MiB)"
        )
    out = data_dir / "benchmarks" / "offline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": args.dataset, "stages": results}, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
