"""Training the DeepFM ranker on synthetic data: it learns, it is reproducible, ONNX scoring of pairs
equals PyTorch, and the stage writes every artifact (model training: the integration tier)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from data_exchange_center import chain
from data_exchange_center.artifacts import read_json, read_parquet
from data_exchange_center.feature_spec import FeatureSpec, combine_features
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.settings import load_settings
from data_exchange_center.topk_metrics import topk_metrics
from offline.preprocess.fetch import fetch_dataset
from offline.preprocess.s1_data_split import data_split
from offline.preprocess.s2_term_trans import term_trans
from offline.preprocess.synthetic import SyntheticConfig
from offline.rank.candidates import is_fit_user, validation_candidates
from offline.rank.deepfm import export_onnx, load_ranker
from offline.rank.s1_feature_engi import feature_engi
from offline.rank.s2_model_train import model_train
from offline.rank.scoring import score_pairs
from offline.rank.train import TrainConfig, TrainedRanker, encode_rows, train_ranker
from offline.recall.item_to_item import ItemToItemConfig
from offline.recall.s1_term_recall import term_recall
from offline.recall.s3_item_to_item import item_to_item

pytestmark = pytest.mark.integration

FAST = TrainConfig(epochs=4, batch_size=512, patience=2, max_train_seconds=60)


# --- training on synthetic data ----------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_paths(tmp_path_factory: pytest.TempPathFactory) -> ArtifactPaths:
    paths = ArtifactPaths(tmp_path_factory.mktemp("rank"))
    fetch_dataset("synthetic", paths, synthetic=SyntheticConfig(n_users=300, n_items=200, n_ratings=20_000))
    data_split(paths)
    term_trans(paths)
    term_recall(paths)  # the popularity and seen tables the candidates' index reads
    item_to_item(paths, ItemToItemConfig(n_neighbors=50))  # the validation neighbours of the candidates
    feature_engi(paths)
    return paths


@pytest.fixture(scope="module")
def trained(synthetic_paths: ArtifactPaths) -> tuple[TrainedRanker, TrainedRanker]:
    spec = FeatureSpec.load(synthetic_paths.feature_spec_path)
    train = read_parquet(synthetic_paths.rank_train_path)
    return train_ranker(spec, train, FAST, progress=False), train_ranker(spec, train, FAST, progress=False)


def test_training_learns_and_is_reproducible(trained: tuple[TrainedRanker, TrainedRanker]) -> None:
    first, second = trained
    assert first.selection.best_val_auc > 0.6
    assert first.selection.best_val_auc == pytest.approx(second.selection.best_val_auc, abs=1e-6)
    first_losses = [h["train_loss"] for h in first.refit_history]
    assert first_losses == pytest.approx([h["train_loss"] for h in second.refit_history], abs=1e-6)
    assert len(first.refit_history) == first.selection.best_epoch


def test_scoring_pairs_with_onnx_equals_pytorch(
    synthetic_paths: ArtifactPaths, trained: tuple[TrainedRanker, TrainedRanker], tmp_path: Path
) -> None:
    model = trained[0].model
    spec = FeatureSpec.load(synthetic_paths.feature_spec_path)
    users = read_parquet(synthetic_paths.user_features_path)
    items = read_parquet(synthetic_paths.item_features_path)
    rng = np.random.default_rng(0)
    userids = rng.choice(users["userid"], 500)
    itemids = rng.choice(items["itemid"], 500)
    scores = score_pairs(
        export_onnx(model, tmp_path / "model.onnx"), spec, users, items, userids, itemids, batch_size=128
    )
    user_rows = users.set_index("userid").loc[userids].reset_index()
    item_rows = items.set_index("itemid").loc[itemids].reset_index()
    evidence = spec.evidence(None, 500)  # pairs outside the chain: no recall evidence
    sparse, dense = combine_features(spec.encode_users(user_rows), spec.encode_items(item_rows), evidence)
    expected = model(torch.from_numpy(sparse), torch.from_numpy(dense)).detach().numpy()[:, 0]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    with pytest.raises(ValueError, match="no feature row"):
        score_pairs(tmp_path / "model.onnx", spec, users, items, [-1], itemids[:1])


def test_stage_writes_the_model_artifacts(synthetic_paths: ArtifactPaths) -> None:
    summary = model_train(synthetic_paths, dataclasses.replace(FAST, epochs=2))
    model_dir = synthetic_paths.model_dir
    assert {"model.pt", "model_args.json", "training_history.json", "model.onnx", "reference_scores.parquet"} <= {
        p.name for p in model_dir.iterdir()
    }
    args = read_json(synthetic_paths.model_args_path)
    spec = FeatureSpec.load(synthetic_paths.feature_spec_path)
    assert args["ranker"]["vocab_sizes"] == spec.vocab_sizes and args["ranker"]["n_dense"] == len(spec.dense)
    model = load_ranker(synthetic_paths.model_args_path, synthetic_paths.model_weights_path)
    reference = read_parquet(model_dir / "reference_scores.parquet")
    test = read_parquet(synthetic_paths.rank_test_path)
    positions = reference["row"].to_numpy()
    rows = encode_rows(spec, test.iloc[positions], spec.reference_evidence(positions))
    expected = model(rows.sparse, rows.dense).detach().numpy()[:, 0]
    np.testing.assert_allclose(reference["score"].to_numpy(), expected, atol=1e-6)
    metrics = read_json(synthetic_paths.metrics_path)["rank"]
    assert metrics["n_features"] == spec.n_features and metrics["test_auc"] == summary["test_auc"]
    assert set(metrics) >= {"test_auc", "val_auc", "n_features", "best_epoch", "train_seconds"}
    history = read_json(model_dir / "training_history.json")
    assert len(history["epochs"]) >= history["best_epoch"] >= 1


def test_the_watch_head_learns_on_the_recall_candidates(synthetic_paths: ArtifactPaths) -> None:
    """The stage trains the watch head on the validation setup's candidates: the served score reads their
    evidence, and it ranks the held-out users' candidates far better than chance."""
    model_train(synthetic_paths, dataclasses.replace(FAST, epochs=2, watch_epochs=3))
    spec = FeatureSpec.load(synthetic_paths.feature_spec_path)
    model = load_ranker(synthetic_paths.model_args_path, synthetic_paths.model_weights_path)
    assert spec.n_evidence == len(chain.EVIDENCE_FIELDS) == model.config.n_evidence
    watch = read_json(synthetic_paths.metrics_path)["rank"]["watch"]
    assert watch["like_weight"] == model.config.like_weight and watch["like_weight"] in FAST.watch_like_weights
    assert watch["n_fit_users"] > 50 and watch["n_selection_users"] > 50
    selection = read_json(synthetic_paths.model_dir / "watch_selection.json")["selection"]
    assert max(r["ndcg"] for r in selection) == watch["selection_ndcg"]
    # chance: the same held-out users' candidates in a random order
    samples = read_parquet(synthetic_paths.samples_path)
    triggers, _ = chain.read_chain_parameters(*synthetic_paths.chain_params_paths)
    sets = validation_candidates(synthetic_paths, samples, load_settings({}).chain_quotas, triggers)
    held_out = sets.subset(~is_fit_user(sets.target_users))
    rng = np.random.default_rng(0)
    shuffled = [c.items[rng.permutation(len(c.items))][:50] for c in held_out.candidates]
    chance = topk_metrics(shuffled, held_out.relevant, 50)["ndcg"]
    assert watch["selection_ndcg"] > 1.5 * chance
    # the served score reads the evidence: the candidates' scores change with it
    item_features = read_parquet(synthetic_paths.item_features_path)
    sparse, dense = held_out.subset(np.arange(len(held_out.target_users)) < 5).encode(spec, item_features)
    changed = dense.copy()
    changed[:, -spec.n_evidence :] = 0.0
    with torch.no_grad():
        assert not torch.allclose(model(torch.from_numpy(sparse), torch.from_numpy(changed)),
                                  model(torch.from_numpy(sparse), torch.from_numpy(dense)))  # fmt: skip
