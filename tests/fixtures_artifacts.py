"""A tiny, consistent set of the artifacts that offline_to_online publishes, for tests.

``write_tiny_artifacts(data_dir)`` writes every file the offline stages hand over (preprocess, recall
and rank artifacts, a feature specification, an ONNX ranker built with the ``onnx`` helper API, and
reference scores computed with numpy, the chain configuration with the default parameters) in their
documented schemas. Ids are sparse and shifted
(users 1000, 1007, ...; items 5, 8, ...) so nothing can assume dense ids. One user has no vector,
one has no seen items, and one test row's user is outside the spec's vocabulary (encoded 0).

The ONNX model: ``score = sigmoid(sum_j table[sparse_ids[:, j] + offsets[j]] + dense @ w + bias)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_exchange_center import model_signature as sig
from data_exchange_center import schema as S
from data_exchange_center.artifacts import write_json, write_npz, write_parquet
from data_exchange_center.chain import DEFAULT_MAX_TRIGGERS, RankingPolicy
from data_exchange_center.feature_spec import CategoricalField, DenseField, FeatureSpec, combine_features
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.user_history import history_feature_columns, history_features

GENRES = ["Action", "Children's", "Comedy", "Drama", "Sci-Fi"]
AGES = [1, 18, 25, 35, 45, 50, 56]


@dataclass(frozen=True)
class TinyConfig:
    n_users: int = 40
    n_items: int = 30
    dim: int = 8
    n_test: int = 1200
    n_neighbors: int = 5
    n_reference: int = 1200
    seed: int = 7
    genres: list[str] = field(default_factory=lambda: list(GENRES))


@dataclass(frozen=True)
class TinyArtifacts:
    paths: ArtifactPaths
    config: TinyConfig
    userids: np.ndarray
    itemids: np.ndarray
    spec: FeatureSpec


def write_tiny_artifacts(data_dir: Path, config: TinyConfig | None = None) -> TinyArtifacts:
    config = config or TinyConfig()
    rng = np.random.default_rng(config.seed)
    paths = ArtifactPaths(Path(data_dir))
    userids = 1000 + 7 * np.arange(config.n_users, dtype=np.int64)
    itemids = 5 + 3 * np.arange(config.n_items, dtype=np.int64)
    item_genres = [sorted(rng.choice(config.genres, size=rng.integers(1, 3), replace=False).tolist()) for _ in itemids]
    write_recall_artifacts(paths, config, rng, userids, itemids, item_genres)
    item_features = make_item_features(itemids, item_genres, config.genres)
    seen = pd.read_parquet(paths.user_seen_path)
    user_features = make_user_features(rng, userids, config.genres, seen, item_features)
    write_profiles(paths, rng, user_features, config.genres)
    spec = make_spec(user_features, item_features, config.genres)
    spec.save(paths.feature_spec_path)
    write_parquet(user_features, paths.user_features_path)
    write_parquet(item_features, paths.item_features_path)
    test = make_test_rows(rng, user_features, item_features, config.n_test)
    write_parquet(test, paths.rank_test_path)
    weights = write_tiny_onnx(paths.onnx_path, spec, rng)
    write_reference_scores(paths, spec, test.head(config.n_reference), weights)
    return TinyArtifacts(paths, config, userids, itemids, spec)


# --- recall ------------------------------------------------------------------------------------------
def write_recall_artifacts(
    paths: ArtifactPaths,
    config: TinyConfig,
    rng: np.random.Generator,
    userids: np.ndarray,
    itemids: np.ndarray,
    item_genres: list[list[str]],
) -> None:
    write_parquet(pd.DataFrame({S.ITEM_ID: itemids, S.TERMS: item_genres}), paths.item_terms_path)
    titles = [f"Tiny film {item} ({1950 + k % 60})" for k, item in enumerate(itemids.tolist())]
    write_parquet(pd.DataFrame({S.ITEM_ID: itemids, S.TITLE: titles, S.GENRES: item_genres}), paths.items_path)
    user_vecs = rng.normal(size=(len(userids) - 1, config.dim)).astype(np.float32)  # the last user has none
    write_npz(paths.user_vectors_path, **{S.VECTOR_IDS: userids[:-1], S.VECTORS: user_vecs})
    unit = rng.normal(size=(len(itemids), config.dim))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)  # unit norm: each item is its own best neighbour
    write_npz(paths.item_vectors_path, **{S.VECTOR_IDS: itemids, S.VECTORS: unit.astype(np.float32)})
    seen_users = userids[1:]  # the first user has no seen items
    seen = [rng.choice(itemids, size=rng.integers(1, 8), replace=False).astype(np.int64) for _ in seen_users]
    ratings = [rng.integers(1, 6, size=len(s)).astype(np.float32) for s in seen]
    labels = [(r > S.POSITIVE_RATING_THRESHOLD).astype(np.int8) for r in ratings]
    write_parquet(pd.DataFrame({S.USER_ID: seen_users, S.ITEMS: seen, S.LABELS: labels, S.RATINGS: ratings}),
                  paths.user_seen_path)  # fmt: skip
    pop = pd.DataFrame({S.ITEM_ID: itemids, S.SCORE: rng.integers(0, 100, len(itemids)).astype(np.float32)})
    write_parquet(pop.sort_values(S.SCORE, ascending=False, kind="stable"), paths.popularity_path)
    n = min(config.n_neighbors, len(itemids) - 1)
    rows = []
    for item in itemids:
        picked = rng.choice(itemids[itemids != item], n, replace=False)
        rows += [(item, other, weight) for other, weight in zip(picked, np.sort(rng.random(n))[::-1], strict=True)]
    neighbors = pd.DataFrame(rows, columns=[S.ITEM_ID, S.NEIGHBOR, S.WEIGHT]).astype({S.WEIGHT: np.float32})
    write_parquet(neighbors, paths.item_neighbors_path)
    policy = RankingPolicy()  # what item-to-item and the report select offline: here the defaults
    write_json({"max_triggers": DEFAULT_MAX_TRIGGERS}, paths.i2i_params_path)
    write_json({"like_weight": policy.like_weight, "prior_weight": policy.prior_weight}, paths.ranking_policy_path)


def write_profiles(paths: ArtifactPaths, rng: np.random.Generator, users: pd.DataFrame, genres: list[str]) -> None:
    profiles = users[[S.USER_ID, *S.pit_columns(genres), *S.HISTORY_COLUMNS]].copy()
    profiles[S.TERMS] = [
        sorted(rng.choice(genres, size=rng.integers(0, 3), replace=False).tolist()) for _ in users.index
    ]
    write_parquet(profiles, paths.user_profiles_path)


# --- rank --------------------------------------------------------------------------------------------
def make_user_features(
    rng: np.random.Generator, userids: np.ndarray, genres: list[str], seen: pd.DataFrame, items: pd.DataFrame
) -> pd.DataFrame:
    """Random demographics; the history columns of each user's seen timeline (as the offline stage and the
    service compute them), so the published rows and the timelines agree as in a real run."""
    n = len(userids)
    frame = pd.DataFrame(
        {
            S.USER_ID: userids,
            S.GENDER: rng.choice(["F", "M"], n),
            S.AGE: rng.choice(AGES, n),
            S.OCCUPATION: rng.integers(0, 21, n),
        }
    )
    flags = items.set_index(S.ITEM_ID)[[S.genre_flag_column(g) for g in genres]]
    timelines = seen.set_index(S.USER_ID)
    rows = []
    for userid in userids.tolist():
        if userid in timelines.index:
            user = timelines.loc[userid]
            rows.append(history_features(user[S.LABELS], user[S.RATINGS], flags.loc[user[S.ITEMS]].to_numpy()))
        else:
            rows.append(history_features(np.zeros(0), np.zeros(0), np.zeros((0, len(genres)))))
    history = pd.DataFrame(rows, columns=history_feature_columns(genres))
    columns = [*S.pit_columns(genres), *S.HISTORY_COLUMNS]
    frame[columns] = history[columns].to_numpy()
    frame[S.pit_columns(genres)] = frame[S.pit_columns(genres)].astype(np.int16)
    return frame


def make_item_features(itemids: np.ndarray, item_genres: list[list[str]], genres: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({S.ITEM_ID: itemids})
    for genre in genres:
        frame[S.genre_flag_column(genre)] = np.array([genre in g for g in item_genres], dtype=np.int8)
    return frame


def make_spec(users: pd.DataFrame, items: pd.DataFrame, genres: list[str]) -> FeatureSpec:
    categorical = [
        CategoricalField(S.USER_ID, "user", users[S.USER_ID].iloc[:-2].tolist()),  # two users unknown to the spec
        CategoricalField(S.GENDER, "user", ["F", "M"]),
        CategoricalField(S.AGE, "user", AGES),
        CategoricalField(S.OCCUPATION, "user", list(range(21))),
        CategoricalField(S.ITEM_ID, "item", items[S.ITEM_ID].tolist()),
    ]
    user_dense = [*S.pit_columns(genres), *S.HISTORY_COLUMNS]
    dense = [
        DenseField(c, "user", float(users[c].mean()), float(users[c].std(ddof=0)) or 1.0, True) for c in user_dense
    ]
    dense += [DenseField(S.genre_flag_column(g), "item", normalize=False) for g in genres]
    return FeatureSpec(dataset="tiny", categorical=categorical, dense=dense, genres=list(genres))


def make_test_rows(rng: np.random.Generator, users: pd.DataFrame, items: pd.DataFrame, n: int) -> pd.DataFrame:
    user_rows = users.iloc[rng.integers(0, len(users), n)].reset_index(drop=True)
    item_rows = items.iloc[rng.integers(0, len(items), n)].reset_index(drop=True)
    keys = pd.DataFrame(
        {
            S.USER_ID: user_rows[S.USER_ID],
            S.ITEM_ID: item_rows[S.ITEM_ID],
            S.LABEL: rng.integers(0, 2, n).astype(np.int8),
            S.SEQ: np.arange(n, dtype=np.int32),
        }
    )
    return pd.concat([keys, user_rows.drop(columns=S.USER_ID), item_rows.drop(columns=S.ITEM_ID)], axis=1)


def write_tiny_onnx(path: Path, spec: FeatureSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Write the tiny ranker; returns its weights (for the numpy reference)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_sparse, n_dense = len(spec.categorical), len(spec.dense)
    weights: dict[str, np.ndarray] = {
        "offsets": np.concatenate([[0], np.cumsum(spec.vocab_sizes)[:-1]]).astype(np.int64),
        "table": (0.3 * rng.normal(size=sum(spec.vocab_sizes))).astype(np.float32),
        "w_dense": (0.2 * rng.normal(size=(n_dense, 1))).astype(np.float32),
        "bias": np.array([0.1], dtype=np.float32),
        "axes": np.array([1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Add", [sig.INPUT_SPARSE, "offsets"], ["rows"]),
        helper.make_node("Gather", ["table", "rows"], ["picked"]),
        helper.make_node("ReduceSum", ["picked", "axes"], ["sparse_sum"], keepdims=1),
        helper.make_node("MatMul", [sig.INPUT_DENSE, "w_dense"], ["dense_sum"]),
        helper.make_node("Add", ["sparse_sum", "dense_sum"], ["partial"]),
        helper.make_node("Add", ["partial", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [sig.OUTPUT_SCORE]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_ranker",
        [
            helper.make_tensor_value_info(sig.INPUT_SPARSE, TensorProto.INT64, ["batch", n_sparse]),
            helper.make_tensor_value_info(sig.INPUT_DENSE, TensorProto.FLOAT, ["batch", n_dense]),
        ],
        [helper.make_tensor_value_info(sig.OUTPUT_SCORE, TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", sig.ONNX_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return weights


def numpy_scores(spec: FeatureSpec, rows: pd.DataFrame, weights: dict[str, np.ndarray]) -> np.ndarray:
    """The tiny ranker in numpy (float64, then float32): the 'PyTorch' reference of the tests."""
    sparse, dense = combine_features(spec.encode_users(rows), spec.encode_items(rows))
    logit = weights["table"][sparse + weights["offsets"]].astype(np.float64).sum(axis=1)
    logit += (dense.astype(np.float64) @ weights["w_dense"].astype(np.float64))[:, 0] + float(weights["bias"][0])
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def write_reference_scores(
    paths: ArtifactPaths, spec: FeatureSpec, rows: pd.DataFrame, weights: dict[str, np.ndarray]
) -> None:
    scores = numpy_scores(spec, rows, weights)
    write_parquet(
        pd.DataFrame({"row": np.arange(len(rows), dtype=np.int64), S.SCORE: scores}), paths.reference_scores_path
    )


# --- the vector model's user side ---------------------------------------------------------------------
@dataclass(frozen=True)
class TinyUserTower:
    """``[sum_j E[items_j] * (1 + liked_j), 1]``: the user side of a next-item model, small enough to check."""

    embeddings: np.ndarray  # (n_items + 1, dim - 1) float32, row 0 = padding
    vocab_ids: np.ndarray  # (n_items,) the item vectors' ids
    window: int

    def vector(self, seen: np.ndarray, seen_labels: np.ndarray) -> np.ndarray:
        """What the service must compute for a user with these seen items (time order)."""
        from data_exchange_center.feature_spec import encode_recent_items

        items, liked = encode_recent_items(seen, seen_labels, self.vocab_ids, self.window)
        summed = (self.embeddings[items[0]].astype(np.float64) * (1.0 + liked[0])[:, None]).sum(axis=0)
        return np.concatenate([summed, [1.0]]).astype(np.float32)


def write_tiny_user_tower(paths: ArtifactPaths, window: int = 4, seed: int = 11) -> TinyUserTower:
    """The user tower ONNX file, its ``model_args.json`` and PyTorch-style reference vectors (numpy) of
    every user with seen items, where the vector stage writes them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from data_exchange_center.artifacts import read_npz, read_parquet

    vocab = read_npz(paths.item_vectors_path, (S.VECTOR_IDS, S.VECTORS))
    vocab_ids, dim = vocab[S.VECTOR_IDS].astype(np.int64), int(vocab[S.VECTORS].shape[1])
    embeddings = np.random.default_rng(seed).normal(size=(len(vocab_ids) + 1, dim - 1)).astype(np.float32)
    embeddings[0] = 0.0
    weights: dict[str, np.ndarray] = {
        "E": embeddings,
        "one": np.array(1.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64),
    }
    items_in, liked_in, out = sig.USER_TOWER_INPUT_ITEMS, sig.USER_TOWER_INPUT_LIKED, sig.USER_TOWER_OUTPUT
    nodes = [
        helper.make_node("Gather", ["E", items_in], ["rows"]),  # (batch, window, dim - 1)
        helper.make_node("Add", [liked_in, "one"], ["weight"]),
        helper.make_node("Unsqueeze", ["weight", "axis2"], ["weight3"]),
        helper.make_node("Mul", ["rows", "weight3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["summed"], keepdims=0),  # (batch, dim - 1)
        helper.make_node("Mul", [liked_in, "zero"], ["zeros"]),
        helper.make_node("ReduceSum", ["zeros", "axis1"], ["zero_col"], keepdims=1),  # (batch, 1)
        helper.make_node("Add", ["zero_col", "one"], ["ones"]),
        helper.make_node("Concat", ["summed", "ones"], [out], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_user_tower",
        [
            helper.make_tensor_value_info(items_in, TensorProto.INT64, ["batch", window]),
            helper.make_tensor_value_info(liked_in, TensorProto.FLOAT, ["batch", window]),
        ],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", sig.ONNX_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    paths.vector_model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(paths.user_tower_onnx_path))
    write_json({"window": window, "dim": dim - 1}, paths.user_tower_args_path)
    tower = TinyUserTower(embeddings, vocab_ids, window)
    seen = read_parquet(paths.user_seen_path, (S.USER_ID, S.ITEMS, S.LABELS))
    seen = seen[seen[S.ITEMS].map(len) > 0]
    vectors = [
        tower.vector(np.asarray(i), np.asarray(lab)) for i, lab in zip(seen[S.ITEMS], seen[S.LABELS], strict=True)
    ]
    write_parquet(pd.DataFrame({S.USER_ID: seen[S.USER_ID].to_numpy(np.int64), S.VECTORS: vectors}),
                  paths.user_tower_reference_path)  # fmt: skip
    return tower
