"""The DeepFM ranker: shapes, genre crosses, persistence, ONNX export, and training on synthetic data
(learns, reproducible, the stage writes every artifact, ONNX scoring of pairs equals PyTorch)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from data_exchange_center.artifacts import read_json, read_parquet
from data_exchange_center.feature_spec import FeatureSpec, combine_features
from data_exchange_center.paths import ArtifactPaths
from offline.preprocess.fetch import fetch_dataset
from offline.preprocess.s1_data_split import data_split
from offline.preprocess.s2_term_trans import term_trans
from offline.preprocess.synthetic import SyntheticConfig
from offline.rank.deepfm import DeepFM, RankerConfig, export_onnx, load_ranker
from offline.rank.s1_feature_engi import feature_engi
from offline.rank.s2_model_train import model_train
from offline.rank.scoring import load_session, score_encoded, score_pairs
from offline.rank.train import TrainConfig, TrainedRanker, encode_rows, train_ranker

pytestmark = pytest.mark.unit

CONFIG = RankerConfig(
    vocab_sizes=[5, 3, 4],
    n_dense=7,
    embed_dim=4,
    hidden_dims=[8],
    dropout=0.1,
    fm_dense_fields=[0, 1],
    mlp_on_embeddings=True,
    cross_user_fields=[[2, 3], [4, 5]],  # two affinity groups over two genres
    cross_item_fields=[5, 6],
)
FAST = TrainConfig(epochs=4, batch_size=512, patience=2, max_train_seconds=60)


def random_inputs(config: RankerConfig, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sparse = np.column_stack([rng.integers(0, v, n) for v in config.vocab_sizes])  # (n, n_sparse)
    dense = rng.normal(size=(n, config.n_dense)).astype(np.float32)  # (n, n_dense)
    return torch.from_numpy(sparse), torch.from_numpy(dense)


def trained_model(config: RankerConfig = CONFIG) -> DeepFM:
    torch.manual_seed(0)
    model = DeepFM(config)
    with torch.no_grad():  # move away from the zero-initialized first-order weights
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


# --- the model ---------------------------------------------------------------------------------
def test_output_is_a_probability_per_row() -> None:
    model = trained_model()
    sparse, dense = random_inputs(CONFIG, 33)
    scores = model(sparse, dense)
    assert scores.shape == (33, 1) and scores.dtype == torch.float32
    assert ((scores > 0) & (scores < 1)).all()
    assert torch.allclose(scores, torch.sigmoid(model.logits(sparse, dense)))


def test_unknown_ids_start_at_zero() -> None:
    model = DeepFM(CONFIG)
    assert model.sparse_embedding.weight[[0, 5, 8]].abs().sum() == 0  # index 0 of each field
    assert model.sparse_embedding.weight[[1, 6, 9]].abs().sum() > 0


def test_genre_crosses_are_mean_affinities_over_the_items_genres() -> None:
    model = DeepFM(CONFIG)
    dense = torch.tensor(
        [
            [0, 0, 0.2, 0.6, 0.1, 1, 1],  # both genres: mean affinity; column 5 is a flag and an affinity
            [0, 0, 0.2, 0.6, 0.1, 0, 1],  # second genre only
            [0, 0, 0.2, 0.6, 0.1, 0, 0],  # no genre: 0
        ]
    )
    expected = torch.tensor([[0.4, 0.55], [0.6, 0.0], [0.0, 0.0]])
    assert torch.allclose(model.genre_crosses(dense), expected)


def test_config_checks_its_field_indices() -> None:
    with pytest.raises(ValueError, match="dense field indices"):
        DeepFM(dataclasses.replace(CONFIG, cross_item_fields=[5, 7]))
    with pytest.raises(ValueError, match="one field per item genre"):
        DeepFM(dataclasses.replace(CONFIG, cross_user_fields=[[2, 3, 4]]))


def test_model_is_rebuilt_from_its_args_and_weights(tmp_path: Path) -> None:
    model = trained_model()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model_args.json").write_text(json.dumps({"ranker": model.config.to_dict()}))
    loaded = load_ranker(tmp_path / "model_args.json", tmp_path / "model.pt")
    assert loaded.config == model.config
    sparse, dense = random_inputs(CONFIG, 10)
    assert torch.equal(loaded(sparse, dense), model(sparse, dense))


def test_onnx_export_equals_pytorch_for_any_batch_size(tmp_path: Path) -> None:
    model = trained_model()
    path = export_onnx(model, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["sparse_ids", "dense"]
    assert [o.name for o in proto.graph.output] == ["score"]
    assert not list(tmp_path.glob("*.data")) and len(list(tmp_path.iterdir())) == 1  # one self-contained file
    session = load_session(path)
    for n in (1, 37, 1000):
        sparse, dense = random_inputs(CONFIG, n, seed=n)
        expected = model(sparse, dense).detach().numpy()[:, 0]
        np.testing.assert_allclose(score_encoded(session, sparse.numpy(), dense.numpy()), expected, atol=1e-6)


# --- training on synthetic data ----------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_paths(tmp_path_factory: pytest.TempPathFactory) -> ArtifactPaths:
    paths = ArtifactPaths(tmp_path_factory.mktemp("rank"))
    fetch_dataset("synthetic", paths, synthetic=SyntheticConfig(n_users=300, n_items=200, n_ratings=20_000))
    data_split(paths)
    term_trans(paths)
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
    sparse, dense = combine_features(spec.encode_users(user_rows), spec.encode_items(item_rows))
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
    rows = encode_rows(spec, test.iloc[reference["row"].to_numpy()])
    expected = model(rows.sparse, rows.dense).detach().numpy()[:, 0]
    np.testing.assert_allclose(reference["score"].to_numpy(), expected, atol=1e-6)
    metrics = read_json(synthetic_paths.metrics_path)["rank"]
    assert metrics["n_features"] == spec.n_features and metrics["test_auc"] == summary["test_auc"]
    assert set(metrics) >= {"test_auc", "val_auc", "n_features", "best_epoch", "train_seconds"}
    history = read_json(model_dir / "training_history.json")
    assert len(history["epochs"]) >= history["best_epoch"] >= 1
