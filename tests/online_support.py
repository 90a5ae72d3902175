"""Tiny published artifact sets for the online service's tests (embedded profile).

``publish_tiny(data_dir)`` writes the tiny artifacts (``tests/fixtures_artifacts.py``) plus a chain
configuration, and runs the offline_to_online stages on the embedded profile: user store, item
manifest, Feast repository (SQLite, applied and materialized) and the Triton model repositories.
``expected_list`` computes the chain's answer for one user straight from the artifacts with the shared
chain steps and ONNX Runtime: what the offline evaluation does, and what the service must serve.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import write_json
from data_exchange_center.feature_spec import FeatureSpec, combine_features
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.online_layout import items_store_dir, read_current_version, users_store_dir
from data_exchange_center.paths import ArtifactPaths
from data_exchange_center.user_history import encoded_history_row
from tests.fixtures_artifacts import TinyArtifacts, write_tiny_artifacts

TRIGGERS = chain.TriggerPolicy(max_triggers=5)
POLICY = chain.RankingPolicy(like_weight=1.0, prior_weight=0.01)
QUOTAS = {"i2i": 200, "vector": 100, "term": 50, "popularity": 50}


def publish_users(data_dir: Path) -> None:
    from offline_to_online.recall import s1_user_to_redis

    assert s1_user_to_redis.main(["--data-dir", str(data_dir), "--profile", "embedded", "--quiet"]) == 0


def publish_model(data_dir: Path) -> None:
    from offline_to_online.rank import s2_model_to_triton

    assert s2_model_to_triton.main(["--data-dir", str(data_dir), "--profile", "embedded", "--quiet"]) == 0


def publish_tiny(data_dir: Path, before_publish: Callable[[ArtifactPaths], object] | None = None) -> TinyArtifacts:
    """Write the tiny artifacts (then ``before_publish(paths)``, to add or change some) and publish them."""
    from offline_to_online.rank import s1_feature_to_feast
    from offline_to_online.recall import s2_item_to_es

    tiny = write_tiny_artifacts(data_dir)
    write_chain_params(tiny.paths)
    if before_publish is not None:
        before_publish(tiny.paths)
    args = ["--data-dir", str(data_dir), "--profile", "embedded", "--quiet"]
    publish_users(data_dir)
    assert s2_item_to_es.main(args) == 0
    assert s1_feature_to_feast.main(args) == 0
    publish_model(data_dir)
    return tiny


def write_chain_params(paths: ArtifactPaths) -> None:
    write_json(TRIGGERS.to_dict(), paths.i2i_params_path)
    write_json(POLICY.to_dict(), paths.ranking_policy_path)


def copy_published(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def live_versions(paths: ArtifactPaths) -> dict[str, str | None]:
    return {
        "users": read_current_version(users_store_dir(paths)),
        "items": read_current_version(items_store_dir(paths)),
    }


def user_state(paths: ArtifactPaths, userid: int) -> chain.UserState:
    """The user's state straight from the recall artifacts (the offline evaluation's source)."""
    profiles = pd.read_parquet(paths.user_profiles_path).set_index(S.USER_ID)
    seen = pd.read_parquet(paths.user_seen_path).set_index(S.USER_ID)
    vectors = np.load(paths.user_vectors_path)
    ids = vectors[S.VECTOR_IDS].tolist()
    return chain.UserState(
        terms=list(profiles.loc[userid, S.TERMS]) if userid in profiles.index else [],
        vector=vectors[S.VECTORS][ids.index(userid)] if userid in ids else None,
        seen=np.asarray(seen.loc[userid, S.ITEMS] if userid in seen.index else [], np.int64),
        seen_labels=np.asarray(seen.loc[userid, S.LABELS] if userid in seen.index else [], np.int8),
        seen_ratings=np.asarray(seen.loc[userid, S.RATINGS] if userid in seen.index else [], np.float32),
    )


def expected_list(
    paths: ArtifactPaths,
    userid: int,
    size: int,
    state: chain.UserState | None = None,
    policy: chain.RankingPolicy = POLICY,
    live_history: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The chain's ranked (items, scores) for a user, from the artifacts and ONNX Runtime (``state``: the
    user's recall state, by default the one in the artifacts; ``policy``: the published one;
    ``live_history``: the ranker's history features computed from ``state``'s timeline, as the service
    does after live events; a user without a feature row gets the default row)."""
    import onnxruntime as ort

    from online.backends.feature_tables import default_row

    index = ItemIndex.load(paths)
    quotas = dict(QUOTAS, popularity=max(QUOTAS["popularity"], size))
    state = state if state is not None else user_state(paths, userid)
    results, i2i_all = chain.recall_channels(index, state, quotas, TRIGGERS)
    candidates = chain.merge_candidates(results, *i2i_all)
    spec = FeatureSpec.load(paths.feature_spec_path)
    users = pd.read_parquet(paths.user_features_path)
    user_rows = users[users[S.USER_ID] == userid]
    user_part = spec.encode_users(user_rows) if len(user_rows) else default_row(spec, "user")
    item_table = pd.read_parquet(paths.item_features_path).set_index(S.ITEM_ID)
    if live_history:
        assert state.seen_ratings is not None
        seen_dense = spec.encode_items(item_table.loc[state.seen].reset_index())[1]
        history = encoded_history_row(spec, state.seen_labels, state.seen_ratings, seen_dense)
        assert history is not None
        user_part = (user_part[0], history)
    items = item_table.loc[candidates.items].reset_index()
    sparse, dense = combine_features(user_part, spec.encode_items(items))
    session = ort.InferenceSession(str(paths.onnx_path), providers=["CPUExecutionProvider"])
    like = session.run(["score"], {"sparse_ids": sparse, "dense": dense})[0][:, 0]
    return chain.rank_and_cut(candidates, chain.final_scores(candidates, like, policy), size)
