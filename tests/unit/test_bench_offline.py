"""scripts/bench_offline.py: sizes, the ML-32M shape, growth exponents and the scaling report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.bench_offline import (
    ML32M_SHAPE,
    STAGES,
    growth_exponent,
    ml32m_shape,
    parse_size,
    pipeline_total,
    plot_scaling,
    run_stages,
    scaling_table,
    tree_rss_mib,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"), [("1m", 1_000_000), ("500k", 500_000), ("32000000", 32_000_000), ("1.5M", 1_500_000)]
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_ml32m_shape_at_full_size_and_in_proportion() -> None:
    assert ml32m_shape(32_000_000) == ML32M_SHAPE
    small = ml32m_shape(1_000_000)
    assert small == {"n_ratings": 1_000_000, "n_users": 6280, "n_items": 2737}


def test_the_stages_are_the_whole_pipeline_of_the_makefile() -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    in_make = [line.split(" -m ")[1].split()[0] for line in makefile.splitlines() if "$(PYTHON) -m offline" in line]
    assert list(STAGES.values()) == in_make


def test_run_stages_passes_engine_and_profile_and_totals(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, list[str]]] = []

    def fake_run_stage(module: str, args: list[str], data_dir: Path) -> tuple[float, float]:
        calls.append((module, args))
        return 2.0, 100.0 * len(calls)

    monkeypatch.setattr("scripts.bench_offline.run_stage", fake_run_stage)
    stages = ["s0_fetch_data", "s1_feature_engi", "s2_item_to_es"]
    results = run_stages(stages, ["--dataset", "x"], tmp_path, "spark", repeat=1)
    assert calls == [
        ("offline.preprocess.s0_fetch_data", ["--dataset", "x"]),
        ("offline.rank.s1_feature_engi", ["--engine", "spark"]),
        ("offline_to_online.recall.s2_item_to_es", ["--profile", "embedded"]),
    ]
    assert pipeline_total(results) == {"wall_s": 6.0, "peak_mib": 300.0, "stages": 3}


@pytest.mark.parametrize("power", [1.0, 1.5, 2.0])
def test_growth_exponent_recovers_a_power_law(power: float) -> None:
    sizes = [1_000_000, 4_000_000, 16_000_000]
    assert growth_exponent(sizes, [3.0 * s**power for s in sizes]) == pytest.approx(power)
    assert growth_exponent(sizes[:1], [1.0]) is None


def report_with(times: dict[str, list[float]]) -> dict[str, object]:
    sizes = [1_000_000, 4_000_000]
    runs = [
        {
            "n_ratings": n,
            "stages": {stage: {"wall_s_median": t[i], "peak_mib": 100.0 * (i + 1)} for stage, t in times.items()},
        }
        for i, n in enumerate(sizes)
    ]
    exponents = {
        stage: {
            "time": growth_exponent(sizes, t),
            "memory": growth_exponent(sizes, [100.0, 200.0]),
            "time_largest": growth_exponent(sizes, t),
            "memory_largest": growth_exponent(sizes, [100.0, 200.0]),
        }
        for stage, t in times.items()
    }
    return {"engine": "pandas", "machine": "test", "sizes": sizes, "runs": runs, "exponents": exponents}


def test_scaling_table_names_the_stage_that_grows_faster_than_linearly(tmp_path: Path) -> None:
    report = report_with({"s1_data_split": [1.0, 4.0], "s2_term_trans": [1.0, 16.0]})
    table = scaling_table(report)
    assert "| s2_term_trans | 1.0 s / 100 MiB | 16.0 s / 200 MiB | 2.00 / 2.00 | 0.50 / 0.50 |" in table
    assert table.rstrip().endswith("s2_term_trans.")
    plot_scaling(report, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tree_rss_counts_this_process() -> None:
    assert 10 < tree_rss_mib(os.getpid()) < 100_000
