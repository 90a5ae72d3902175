"""One small synthetic run of the offline stages, as subprocesses, shared by the e2e and services tests.

The offline stages run once per test session (``tests/conftest.py``: ``synthetic_run``); each module
that needs a pipeline run gets its own copy (``copy_run``) and publishes it its own way (embedded or
compose, with or without changes to the item data first), so no module sees another's changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = ["--dataset", "synthetic", "--n-users", "300", "--n-items", "200", "--n-ratings", "24000"]
OFFLINE_STAGES = [
    ("offline/preprocess/s0_fetch_data.py", SYNTHETIC),
    ("offline/preprocess/s1_data_split.py", []),
    ("offline/preprocess/s2_term_trans.py", []),
    ("offline/recall/s1_term_recall.py", []),
    ("offline/recall/s2_vector_recall.py", ["--sample-budget", "60000", "--eval-every-samples", "20000"]),
    ("offline/recall/s3_item_to_item.py", []),
    ("offline/rank/s1_feature_engi.py", []),
    ("offline/rank/s2_model_train.py", ["--epochs", "2"]),
    ("offline/evaluate/s1_topk_report.py", []),  # selects the ranking policy that the item publish copies
]
EMBEDDED_PUBLISH = [
    ("offline_to_online/recall/s1_user_to_redis.py", ["--profile", "embedded"]),
    ("offline_to_online/recall/s2_item_to_es.py", ["--profile", "embedded"]),
    ("offline_to_online/rank/s1_feature_to_feast.py", ["--profile", "embedded"]),
    ("offline_to_online/rank/s2_model_to_triton.py", ["--profile", "embedded"]),
]


def run_stage(script: str, data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT --data-dir DATA_DIR --quiet ARGS``; with ``check``, a failure fails the test with
    the stage's output."""
    done = subprocess.run([sys.executable, str(REPO / script), "--data-dir", str(data_dir), "--quiet", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=900)  # fmt: skip
    if check:
        assert done.returncode == 0, f"{script} {list(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def run_stages(stages: list[tuple[str, list[str]]], data_dir: Path) -> None:
    for script, args in stages:
        run_stage(script, data_dir, *args)


def copy_run(source: Path, target: Path) -> Path:
    """A private copy of a pipeline run (``target`` must not exist yet)."""
    shutil.copytree(source, target)
    return target
