"""The ranking publish stages as functions (the numbered scripts beside this module are their commands)."""

from __future__ import annotations

import logging

import numpy as np
import redis

from data_exchange_center import model_signature as sig
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import FeatureSpec
from data_exchange_center.online_layout import FEAST_PROJECT, latest_model_path, python_model_repository_dir
from data_exchange_center.settings import Settings
from offline_to_online.common import (
    BackendUnavailable,
    PublishVerificationError,
    redact_url,
    served_by,
)
from offline_to_online.rank.feast_publish import FeastPublishReport, prepare_sources, publish_features
from offline_to_online.rank.score_check import (
    MIN_ROWS,
    TOWER_TOLERANCE,
    BackendResult,
    check_history_features,
    compare,
    format_table,
    load_check_rows,
    load_tower_rows,
    onnxruntime_scorer,
    onnxruntime_tower,
    score_in_batches,
    triton_scorer,
    triton_tower,
)
from offline_to_online.rank.triton_repo import check_onnx_model
from offline_to_online.recall.redis_users import REDIS_HINT, connect_redis
from offline_to_online.triton_publish import TritonPublishReport, publish_model

log = logging.getLogger(__name__)
FEATURE_SERVER_REDIS_URL = "redis://redis:6379/0"  # the compose service name, as the feast container sees it


def feature_to_feast(
    settings: Settings,
    server_redis_url: str | None = None,
    project: str = FEAST_PROJECT,
    connect_attempts: int = 5,
) -> FeastPublishReport:
    """Check the rank artifacts against the spec, then generate, apply, materialize and verify."""
    prepared = prepare_sources(settings.paths)  # checked before anything is written
    if not served_by(settings, "features", "feast-", "s1_feature_to_feast", "publishing to Feast's SQLite store"):
        return publish_features(settings.paths, prepared, yaml_redis_url=None, store_redis_url=None, project=project)
    connect_redis(settings.redis_url, attempts=connect_attempts).close()
    try:
        return publish_features(
            settings.paths,
            prepared,
            yaml_redis_url=server_redis_url or FEATURE_SERVER_REDIS_URL,
            store_redis_url=settings.redis_url,
            project=project,
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise BackendUnavailable(
            "Redis (Feast online store)", redact_url(settings.redis_url), exc, f"materialization stopped; {REDIS_HINT}"
        ) from None


def model_to_triton(settings: Settings) -> TritonPublishReport:
    """Check the model against the signature and the spec, then publish it to both repositories."""
    paths = settings.paths
    spec = FeatureSpec.load(paths.feature_spec_path)
    n_sparse, n_dense = len(spec.categorical), len(spec.dense)
    check_onnx_model(paths.onnx_path, n_sparse, n_dense)  # refused before anything is written
    repositories = {"onnxruntime": paths.model_repository_dir, "python": python_model_repository_dir(paths)}
    return publish_model(paths.onnx_path, n_sparse, n_dense, repositories)  # type: ignore[arg-type]


def check_offline_and_online(
    settings: Settings,
    triton_url: str | None = None,
    triton_http_url: str | None = None,
    n_rows: int = MIN_ROWS,
    connect_attempts: int = 5,
) -> list[BackendResult]:
    """Score the reference rows with every configured backend; raise if any differs beyond 1e-5."""
    paths = settings.paths
    spec = FeatureSpec.load(paths.feature_spec_path)
    model_path = latest_model_path(paths.model_repository_dir)
    if model_path is None:
        raise ArtifactError(f"no published model under {paths.model_repository_dir}: run s2_model_to_triton first")
    rows = load_check_rows(paths, spec, n_rows)
    scorers = {f"onnxruntime ({model_path.parent.name}/model.onnx)": onnxruntime_scorer(model_path)}
    checks_triton = triton_url is None and served_by(
        settings, "scorer", "triton", "s3_check_offline_and_online", "checking ONNX Runtime only"
    )
    grpc_url = triton_url or (settings.triton_url if checks_triton else None)
    if grpc_url:
        scorers[f"triton grpc {grpc_url}"] = triton_scorer(grpc_url, "grpc", connect_attempts)
    if triton_http_url:
        scorers[f"triton http {triton_http_url}"] = triton_scorer(triton_http_url, "http", connect_attempts)
    results = [
        compare(name, score_in_batches(scorer, rows.sparse, rows.dense, sig.MAX_BATCH_SIZE), rows.reference)
        for name, scorer in scorers.items()
    ]
    print(format_table(len(rows.reference), results))
    tower_results = check_user_tower(settings, grpc_url, connect_attempts)
    history = check_history_features(paths, spec)
    if history is not None:
        print(format_table(history.n_rows, [history], "rank/user_features"))
    checked = results + tower_results + ([history] if history is not None else [])
    failed = [f"{r.backend} differs from {r.reference} by more than {r.tolerance:g}" for r in checked if not r.ok]
    if failed:
        raise PublishVerificationError("; ".join(failed))
    return checked


def check_user_tower(settings: Settings, grpc_url: str | None, connect_attempts: int) -> list[BackendResult]:
    """The served item version's user tower (ONNX Runtime, and Triton at ``grpc_url``) against PyTorch."""
    rows = load_tower_rows(settings.paths)
    if rows is None:
        log.info("no user tower in the served item version (or no reference vectors): nothing to check")
        return []
    towers = {f"onnxruntime (items {rows.onnx_path.parent.name[-4:]})": onnxruntime_tower(rows.onnx_path)}
    if grpc_url and rows.triton_version is not None:
        towers[f"triton grpc {sig.USER_TOWER_NAME}/{rows.triton_version}"] = triton_tower(
            grpc_url, rows.triton_version, connect_attempts
        )
    results = [
        compare(name, np.concatenate([run(rows.items[i : i + 512], rows.liked[i : i + 512])
                                      for i in range(0, len(rows.items), 512)]), rows.reference, TOWER_TOLERANCE)
        for name, run in towers.items()
    ]  # fmt: skip
    print(format_table(len(rows.reference), results, "reference_vectors"))
    return results
