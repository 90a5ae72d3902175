"""Every offline stage, in order, on a small synthetic dataset in a temporary folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import schema as S
from data_exchange_center.paths import ArtifactPaths
from tests.pipeline_support import OFFLINE_STAGES, REPO, run_stage, run_stages

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline_dir(synthetic_run: Path) -> Path:
    return synthetic_run  # read only here


def test_every_stage_has_help() -> None:
    for script, _ in OFFLINE_STAGES:
        result = subprocess.run(
            [sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO
        )
        assert result.returncode == 0 and "usage:" in result.stdout, script


def test_pipeline_writes_every_artifact_and_metric(pipeline_dir: Path) -> None:
    paths = ArtifactPaths(pipeline_dir)
    for path in (paths.samples_path, paths.pit_features_path, paths.user_profiles_path, paths.popularity_path,
                 paths.user_vectors_path, paths.user_tower_onnx_path, paths.item_neighbors_path,
                 paths.feature_spec_path, paths.onnx_path,
                 paths.report_path, paths.reports_dir / "topk.png"):  # fmt: skip
        assert path.exists(), path
    metrics = json.loads(paths.metrics_path.read_text())
    assert set(metrics["split"]) == {"n_online", "n_train", "n_test", "n_positive", "n_negative"}
    assert metrics["split"]["n_online"] == 300 * S.N_ONLINE_PER_USER
    assert 0.0 < metrics["vector_recall"]["val_recall_at_50"] <= 1.0
    assert 0.5 < metrics["rank"]["test_auc"] <= 1.0
    topk = metrics["topk"]
    for name in ("popularity", "term", "vector", "i2i", "merged", "ranked"):
        assert 0.0 <= topk[name]["recall"] <= 1.0 and topk[name]["n_users"] > 0
    assert topk["ranked"]["recall"] > topk["popularity"]["recall"]  # personalization beats popularity
    for stage, _ in OFFLINE_STAGES:
        assert Path(stage).stem in metrics["timings_s"]
    samples = pd.read_parquet(paths.samples_path)
    assert len(pd.read_parquet(paths.pit_features_path)) == len(samples)
    assert not list(pipeline_dir.rglob("*.tmp")), "a temporary file was left behind"


def test_missing_input_gives_one_clear_line(tmp_path: Path) -> None:
    result = run_stage("offline/preprocess/s1_data_split.py", tmp_path, check=False)
    assert result.returncode == 2
    assert "missing artifact" in result.stderr and "Traceback" not in result.stderr


def test_same_seed_same_metrics(pipeline_dir: Path, tmp_path: Path) -> None:
    first = json.loads((pipeline_dir / "reports" / "metrics.json").read_text())
    run_stages(OFFLINE_STAGES, tmp_path)
    second = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    np.testing.assert_allclose(first["rank"]["test_auc"], second["rank"]["test_auc"], atol=1e-4)
    np.testing.assert_allclose(first["vector_recall"]["val_recall_at_50"], second["vector_recall"]["val_recall_at_50"],
                               atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(first["topk"]["ranked"]["ndcg"], second["topk"]["ranked"]["ndcg"], atol=1e-4)
