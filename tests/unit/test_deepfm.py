"""The DeepFM ranker without training: shapes, the FM term against a brute-force sum over field pairs,
genre crosses, persistence and ONNX export (training is tests/integration/test_ranker_training.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from offline.rank.deepfm import DeepFM, RankerConfig, export_onnx, load_ranker
from offline.rank.scoring import load_session, score_encoded

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
    np.testing.assert_allclose(
        scores.detach().numpy()[:, 0], 1 / (1 + np.exp(-brute_force_logits(model, sparse, dense))), atol=1e-5
    )


def brute_force_logits(model: DeepFM, sparse: torch.Tensor, dense: torch.Tensor) -> np.ndarray:
    """First order + the FM's sum over every pair of field vectors, one row and one pair at a time, + the MLP."""
    config, out = model.config, []
    with torch.no_grad():
        for r in range(sparse.shape[0]):
            rows = sparse[r] + model.offsets  # (n_sparse,)
            vectors = [model.sparse_embedding.weight[k] for k in rows]
            vectors += [dense[r, f] * model.dense_embedding[j] for j, f in enumerate(config.fm_dense_fields)]
            pairs = sum(float(vectors[i] @ vectors[j]) for i in range(len(vectors)) for j in range(i + 1, len(vectors)))
            values = torch.cat([dense[r : r + 1], model.genre_crosses(dense[r : r + 1])], dim=1)  # (1, n_values)
            first = float(model.sparse_weight.weight[rows].sum() + model.dense_linear(values)[0, 0])
            flat = torch.cat([model.sparse_embedding.weight[rows].flatten(), values[0]]).unsqueeze(0)
            out.append(first + pairs + float(model.mlp.eval()(flat)[0, 0]))
    return np.asarray(out)


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


# --- the watch head over the candidates' recall evidence ----------------------------------------
WATCH_CONFIG = dataclasses.replace(CONFIG, n_dense=CONFIG.n_dense + 3, n_evidence=3, watch_hidden_dims=[6],
                                   like_weight=0.5)  # fmt: skip


def test_the_served_score_is_p_watch_times_p_like_to_the_like_weight() -> None:
    model = trained_model(WATCH_CONFIG)
    sparse, dense = random_inputs(WATCH_CONFIG, 40)
    with torch.no_grad():
        like = torch.sigmoid(model.logits(sparse, dense))[:, 0].numpy()
        watch = torch.sigmoid(model.watch_head(model.watch_inputs(sparse, dense)))[:, 0].numpy()
        served = model(sparse, dense)[:, 0].numpy()
    np.testing.assert_allclose(served, watch * like**0.5, rtol=1e-5)
    # the like head never reads the evidence; the watch head does
    changed = dense.clone()
    changed[:, -3:] = torch.rand(40, 3)
    with torch.no_grad():
        assert torch.equal(model.logits(sparse, changed), model.logits(sparse, dense))
        assert not torch.allclose(model(sparse, changed), model(sparse, dense))
    # the like head of the evidence model is the model without evidence, fed the same user and item values
    plain = DeepFM(CONFIG)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("watch_head")})
    plain.eval()
    with torch.no_grad():
        np.testing.assert_allclose(plain(sparse, dense[:, : CONFIG.n_dense])[:, 0].numpy(), like, atol=1e-6)


def test_the_watch_model_exports_to_onnx_with_the_same_signature(tmp_path: Path) -> None:
    model = trained_model(WATCH_CONFIG)
    path = export_onnx(model, tmp_path / "model.onnx")
    session = load_session(path)
    sparse, dense = random_inputs(WATCH_CONFIG, 25, seed=3)
    expected = model(sparse, dense).detach().numpy()[:, 0]
    np.testing.assert_allclose(score_encoded(session, sparse.numpy(), dense.numpy()), expected, atol=1e-6)
    raw = model.config.to_dict()
    assert RankerConfig.from_dict(raw) == model.config
    assert RankerConfig.from_dict({k: v for k, v in raw.items() if k not in ("n_evidence", "watch_hidden_dims",
                                   "like_weight")}).n_evidence == 0  # fmt: skip  (args written before the head)


def test_evidence_fields_must_leave_room_for_the_crosses() -> None:
    with pytest.raises(ValueError, match="dense field indices"):
        DeepFM(dataclasses.replace(CONFIG, n_evidence=2))  # the crosses read fields 5 and 6, now evidence
