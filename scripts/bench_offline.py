"""Benchmark the offline stages: wall time and peak memory of each, as separate processes.

    python scripts/bench_offline.py --raw-dir ../shared/datasets/ml-1m          # ML-1M
    python scripts/bench_offline.py --dataset synthetic --n-ratings 4000000     # scale: any size
    python scripts/bench_offline.py --stages s1_data_split s2_term_trans s1_feature_engi --repeat 3
    python scripts/bench_offline.py --raw-dir ../shared/datasets/ml-1m --engine spark --stages s1_data_split
    python scripts/bench_offline.py --scale 1m,4m,16m,32m --stages s0_fetch_data s1_data_split s2_term_trans
    python scripts/bench_offline.py --dataset synthetic --n-ratings 32000000 --n-users 200948 --n-items 87585

By default every stage of ``make pipeline`` runs, in its order: the offline stages, the report, the
publishing stages on the embedded profile and the offline == online check; the total (the sum of the
times, the largest peak) is printed beside the ML-32M goal.

Each stage runs in its own process (``python -m <module>``). Peak memory is the largest resident set
of the stage's whole process tree (the process and its children, e.g. Spark's JVM), sampled every
``SAMPLE_S`` seconds from /proc, and never below the process's own ``ru_maxrss``. With ``--repeat N``
the fast stages run N times and the median is reported. Results are printed as a table and written to
``$RECSYS_DATA_DIR/benchmarks/offline.json`` (or ``--data-dir``).

``--scale`` runs the stages on synthetic datasets of growing size, each in the ML-32M shape (users and
items in proportion to the ratings: 32M ratings are 200,948 users and 87,585 items), and writes
``benchmarks/scaling.md`` (a table, the fitted growth exponent of each stage, which ones grow faster
than linearly) and ``benchmarks/scaling.png`` (time and peak memory per stage against ratings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STAGES = {
    "s0_fetch_data": "offline.preprocess.s0_fetch_data",
    "s1_data_split": "offline.preprocess.s1_data_split",
    "s2_term_trans": "offline.preprocess.s2_term_trans",
    "s1_term_recall": "offline.recall.s1_term_recall",
    "s2_vector_recall": "offline.recall.s2_vector_recall",
    "s3_item_to_item": "offline.recall.s3_item_to_item",
    "s1_feature_engi": "offline.rank.s1_feature_engi",
    "s2_model_train": "offline.rank.s2_model_train",
    "s1_topk_report": "offline.evaluate.s1_topk_report",
    # publishing on the embedded profile, then the offline == online check: the rest of `make pipeline`
    "s1_user_to_redis": "offline_to_online.recall.s1_user_to_redis",
    "s2_item_to_es": "offline_to_online.recall.s2_item_to_es",
    "s1_feature_to_feast": "offline_to_online.rank.s1_feature_to_feast",
    "s2_model_to_triton": "offline_to_online.rank.s2_model_to_triton",
    "s3_check_offline_and_online": "offline_to_online.rank.s3_check_offline_and_online",
}
PUBLISH_STAGES = (
    "s1_user_to_redis",
    "s2_item_to_es",
    "s1_feature_to_feast",
    "s2_model_to_triton",
    "s3_check_offline_and_online",
)
ENGINE_STAGES = ("s1_data_split", "s2_term_trans", "s1_term_recall", "s1_feature_engi")  # the stages with --engine
FAST_GROUP = ("s1_data_split", "s2_term_trans", "s1_term_recall", "s1_feature_engi")  # the <= 15 s goal
ML32M_SHAPE = {"n_ratings": 32_000_000, "n_users": 200_948, "n_items": 87_585}
SAMPLE_S = 0.2
MEMORY_GOAL_MIB = 16 * 1024  # the ML-32M goal: the whole pipeline within 16 GiB
SUPERLINEAR_EXPONENT = 1.15  # a fitted exponent above this is reported as faster than linear


# ---- measuring one stage ---------------------------------------------------------------------------------


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB (Linux /proc)."""
    total_kib, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total_kib += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, StopIteration, ValueError):
            continue  # the process ended between two reads
    return total_kib / 1024


def run_stage(module: str, args: list[str], data_dir: Path) -> tuple[float, float]:
    """Wall seconds and peak resident MiB (process tree) of one stage process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", module, "--data-dir", str(data_dir), "--quiet", *args])
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss_mib(process.pid))
        time.sleep(SAMPLE_S)
    elapsed = time.perf_counter() - started
    peak = max(peak, usage.ru_maxrss / 1024)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise StageFailed(f"{module} failed with exit code {code} after {elapsed:.0f} s", code, elapsed, peak)
    return elapsed, peak


class StageFailed(Exception):
    def __init__(self, message: str, code: int, elapsed: float, peak: float) -> None:
        super().__init__(message)
        self.code, self.elapsed, self.peak = code, elapsed, peak


def run_stages(
    stages: list[str], fetch_args: list[str], data_dir: Path, engine: str, repeat: int, keep_going: bool = False
) -> dict[str, dict[str, float]]:
    """Each stage in order; a failure stops the run (``keep_going``: it is recorded, later stages skipped)."""
    results: dict[str, dict[str, float]] = {}
    for name in stages:
        extra = fetch_args if name == "s0_fetch_data" else []
        if name in ENGINE_STAGES:
            extra = [*extra, "--engine", engine]
        if name in PUBLISH_STAGES:
            extra = [*extra, "--profile", "embedded"]
        n_runs = repeat if name in FAST_GROUP else 1
        try:
            runs = [run_stage(STAGES[name], extra, data_dir) for _ in range(n_runs)]
        except StageFailed as exc:
            if not keep_going:
                raise SystemExit(str(exc)) from None
            results[name] = {"failed": exc.code, "wall_s_median": round(exc.elapsed, 3), "peak_mib": round(exc.peak, 1)}
            print(f"{name:18s} {exc}, peak {exc.peak:.0f} MiB: later stages of this size not run", flush=True)
            break
        results[name] = {
            "wall_s_median": round(statistics.median(r[0] for r in runs), 3),
            "peak_mib": round(max(r[1] for r in runs), 1),
            "runs": n_runs,
        }
        print(f"{name:28s} {results[name]['wall_s_median']:9.2f} s  {results[name]['peak_mib']:8.0f} MiB", flush=True)
    return results


def pipeline_total(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The stages run one after another: the sum of their times and the largest of their peaks."""
    return {
        "wall_s": round(sum(r["wall_s_median"] for r in results.values()), 1),
        "peak_mib": round(max((r["peak_mib"] for r in results.values()), default=0.0), 1),
        "stages": len(results),
    }


# ---- the scaling report ----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``1m`` -> 1,000,000; ``500k`` -> 500,000; ``32000000`` -> 32,000,000."""
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if factor > 1 else text
    try:
        return int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 1m, 500k or 4000000") from None


def ml32m_shape(n_ratings: int) -> dict[str, int]:
    """Users and items in the ML-32M proportions for ``n_ratings`` (at least 20 ratings per user)."""
    share = n_ratings / ML32M_SHAPE["n_ratings"]
    n_users = max(10, round(ML32M_SHAPE["n_users"] * share))
    return {
        "n_ratings": n_ratings,
        "n_users": min(n_users, n_ratings // 20),
        "n_items": max(50, round(ML32M_SHAPE["n_items"] * share)),
    }


def growth_exponent(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(size): 1 is linear, 2 quadratic."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    if var_x == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var_x


def scaling_table(report: dict[str, Any]) -> str:
    """Markdown: one row per (stage, size), then the fitted exponents."""
    runs = report["runs"]
    stages = [s for s in STAGES if any(s in run["stages"] for run in runs)]
    lines = [
        f"Engine: {report['engine']}. Machine: {report['machine']}.",
        "",
        "| stage | "
        + " | ".join(f"{run['n_ratings']:,} ratings" for run in runs)
        + " | time exponent (all / largest two) | memory exponent (all / largest two) |",
        "|---|" + "---|" * (len(runs) + 2),
    ]
    for stage in stages:
        cells = []
        for run in runs:
            result = run["stages"].get(stage)
            cells.append(_cell(result))
        exp = report["exponents"][stage]
        time_exp = f"{_fmt(exp['time'])} / {_fmt(exp.get('time_largest'))}"
        memory_exp = f"{_fmt(exp['memory'])} / {_fmt(exp.get('memory_largest'))}"
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {time_exp} | {memory_exp} |")
    faster = [s for s in stages if (report["exponents"][s].get("time_largest") or 0) > SUPERLINEAR_EXPONENT]
    lines += [
        "",
        "Exponent: the slope of log(value) against log(ratings), over all sizes run and between the two",
        "largest (1 = linear; at small sizes fixed costs such as imports pull the slope below 1).",
        f"Faster than linear in time between the two largest sizes (exponent > {SUPERLINEAR_EXPONENT}): "
        f"{', '.join(faster) if faster else 'none of the stages run'}.",
    ]
    return "\n".join(lines) + "\n"


def _cell(result: dict[str, float] | None) -> str:
    if result is None:
        return "not run"
    measured = f"{result['wall_s_median']:.1f} s / {result['peak_mib']:.0f} MiB"
    return f"failed (exit {result['failed']:.0f}) at {measured}" if "failed" in result else measured


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot_scaling(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(12, 4.8))
    for stage in STAGES:
        points = [
            (run["n_ratings"], run["stages"][stage])
            for run in runs
            if stage in run["stages"] and "failed" not in run["stages"][stage]
        ]
        if not points:
            continue
        sizes = [p[0] for p in points]
        ax_time.plot(sizes, [p[1]["wall_s_median"] for p in points], marker="o", label=stage)
        ax_memory.plot(sizes, [p[1]["peak_mib"] for p in points], marker="o", label=stage)
    for ax, label in ((ax_time, "wall time (s)"), (ax_memory, "peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ratings")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_memory.axhline(MEMORY_GOAL_MIB, color="grey", linestyle="--", linewidth=1, label="16 GiB goal")
    ax_time.legend(fontsize=8)
    ax_memory.legend(fontsize=8)
    fig.suptitle(f"Offline stages against synthetic size (ML-32M shape), engine {report['engine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_scaling(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    runs = []
    for n_ratings in args.scale:
        shape = ml32m_shape(n_ratings)
        data_dir = out_dir / f"synthetic-{n_ratings}"
        fetch_args = ["--dataset", "synthetic", *[f"--{k.replace('_', '-')}={v}" for k, v in shape.items()]]
        print(f"== {n_ratings:,} ratings ({shape['n_users']:,} users, {shape['n_items']:,} items)", flush=True)
        stages = run_stages(args.stages, fetch_args, data_dir, args.engine, args.repeat, keep_going=True)
        runs.append({**shape, "stages": stages})
        write_scaling(args, out_dir, runs)  # after every size: a long run leaves a report when interrupted
    return write_scaling(args, out_dir, runs)


def write_scaling(args: argparse.Namespace, out_dir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = [run["n_ratings"] for run in runs]
    exponents = {}
    for stage in args.stages:
        measured = [
            (run["n_ratings"], run["stages"][stage])
            for run in runs
            if stage in run["stages"] and "failed" not in run["stages"][stage]
        ]
        sizes_run = [m[0] for m in measured]
        times, memories = [m[1]["wall_s_median"] for m in measured], [m[1]["peak_mib"] for m in measured]
        exponents[stage] = {
            "time": growth_exponent(sizes_run, times),
            "memory": growth_exponent(sizes_run, memories),
            # between the two largest sizes: fixed costs (imports, start-up) no longer hide the growth
            "time_largest": growth_exponent(sizes_run[-2:], times[-2:]),
            "memory_largest": growth_exponent(sizes_run[-2:], memories[-2:]),
        }
    report = {"engine": args.engine, "machine": args.machine, "sizes": sizes, "runs": runs, "exponents": exponents}
    bench_dir = out_dir / "benchmarks"
    bench_dir.mkdir(parents=True, exist_ok=True)
    (bench_dir / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (bench_dir / "scaling.md").write_text(scaling_table(report))
    plot_scaling(report, bench_dir / "scaling.png")
    return report


# ---- the command -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--raw-dir", type=Path, default=None)
    parser.add_argument("--n-users", type=int, default=6040)
    parser.add_argument("--n-items", type=int, default=3706)
    parser.add_argument("--n-ratings", type=int, default=1_000_209)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each fast stage (median reported)")
    parser.add_argument(
        "--engine", choices=("pandas", "spark"), default="pandas", help=f"engine of {', '.join(ENGINE_STAGES)}"
    )
    parser.add_argument(
        "--scale",
        type=lambda text: [parse_size(part) for part in text.split(",")],
        default=None,
        help="comma-separated synthetic sizes in ratings (e.g. 1m,4m,16m,32m): the scaling report",
    )
    parser.add_argument("--machine", default=f"{os.cpu_count()} cores", help="a note on the machine, for the report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="recsys_bench_"))
    if args.scale:
        report = run_scaling(args, data_dir)
        print(scaling_table(report))
        print(f"written {data_dir / 'benchmarks'}/scaling.md, scaling.png, scaling.json")
        return 0
    fetch_args = ["--dataset", args.dataset]
    if args.raw_dir:
        fetch_args += ["--raw-dir", str(args.raw_dir)]
    if args.dataset == "synthetic":
        fetch_args += [f"--n-users={args.n_users}", f"--n-items={args.n_items}", f"--n-ratings={args.n_ratings}"]
    results = run_stages(args.stages, fetch_args, data_dir, args.engine, args.repeat)
    fast = [results[s] for s in FAST_GROUP if s in results]
    if fast:
        fast_s = sum(r["wall_s_median"] for r in fast)
        fast_peak = max(r["peak_mib"] for r in fast)
        print(
            f"{'split+terms+term recall+features':34s} {fast_s:.2f} s, peak {fast_peak:.0f} MiB "
            "(goal <= 15 s, <= 1536 MiB)"
        )
    total = pipeline_total(results)
    print(
        f"{'all stages run':28s} {total['wall_s'] / 60:9.1f} min {total['peak_mib'] / 1024:7.1f} GiB peak "
        f"(the ML-32M goal: <= 90 min, <= {MEMORY_GOAL_MIB // 1024} GiB)"
    )
    out = data_dir / "benchmarks" / "offline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": args.dataset, "engine": args.engine, "stages": results, "total": total}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
