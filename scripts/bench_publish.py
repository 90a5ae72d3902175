"""Benchmark the offline_to_online stages: publish time of each, per profile, on real artifacts.

    python scripts/bench_publish.py                       # $RECSYS_DATA_DIR (ML-1M after `make offline`)
    python scripts/bench_publish.py --triton              # also a real tritonserver (pytriton venv)
    python scripts/bench_publish.py --redis-url redis://127.0.0.1:6379/0 --es-url https://127.0.0.1:9200

The stages run in this process (their imports are warmed first, so times are publish work, not
interpreter start-up) on a scratch data directory whose artifact folders are symbolic links to the
given one: the real published state is never touched. The embedded profile runs first; then the compose
profile against a Redis server that this script starts (scripts/native_servers.py) unless --redis-url names one:
users to Redis, features to Feast on that Redis, and with --triton the offline == online check over
gRPC against a real tritonserver serving the Python-backend repository. Elasticsearch needs --es-url
(credentials from RECSYS_ES_*). Results are printed and written to <data-dir>/benchmarks/publish.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from data_exchange_center.online_layout import python_model_repository_dir  # noqa: E402
from data_exchange_center.paths import ArtifactPaths  # noqa: E402
from data_exchange_center.settings import Settings, load_settings  # noqa: E402
from offline_to_online.rank.stages import check_offline_and_online, feature_to_feast, model_to_triton  # noqa: E402
from offline_to_online.recall.stages import item_to_es, user_to_redis  # noqa: E402

ARTIFACT_FOLDERS = ("dataset", "preprocess", "recall", "rank")
Row = dict[str, Any]


def scratch_data_dir(source: Path) -> Path:
    """A temporary data directory whose artifact folders link to ``source``'s."""
    scratch = Path(tempfile.mkdtemp(prefix="recsys_bench_publish_"))
    for name in ARTIFACT_FOLDERS:
        if (source / name).is_dir():
            (scratch / name).symlink_to((source / name).resolve(), target_is_directory=True)
    return scratch


def timed(rows: list[Row], profile: str, stage: str, backend: str, work: Callable[[], object]) -> object:
    started = time.perf_counter()
    result = work()
    rows.append({"profile": profile, "stage": stage, "backend": backend, "seconds": time.perf_counter() - started})
    print(f"  {profile:<9} {stage:<28} {backend:<28} {rows[-1]['seconds']:7.2f} s", flush=True)
    return result


def warm_imports(rows: list[Row]) -> None:
    """Import the heavy clients once, timed apart from the stages (feast alone takes seconds)."""
    for module in ("feast", "onnxruntime", "onnx", "tritonclient.grpc", "elasticsearch"):
        timed(rows, "-", f"import {module}", "", lambda m=module: importlib.import_module(m))  # type: ignore[misc]


def bench_embedded(rows: list[Row], settings: Settings) -> None:
    timed(rows, "embedded", "s1_user_to_redis", "online/users/", lambda: user_to_redis(settings, progress=False))
    timed(rows, "embedded", "s2_item_to_es", "online/items manifest", lambda: item_to_es(settings, progress=False))
    timed(rows, "embedded", "s1_feature_to_feast", "Feast, SQLite", lambda: feature_to_feast(settings))
    timed(rows, "embedded", "s2_model_to_triton", "model repositories", lambda: model_to_triton(settings))
    timed(rows, "embedded", "s3_check_offline_and_online", "onnxruntime", lambda: check_offline_and_online(settings))


@contextlib.contextmanager
def redis_url_for(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from scripts.native_servers import RedisServer

    with RedisServer(appendonly=False) as server:
        yield server.url


def bench_compose(rows: list[Row], settings: Settings, args: argparse.Namespace) -> None:
    with redis_url_for(args.redis_url) as url:
        compose = load_settings({"data_dir": settings.data_dir, "profile": "compose", "redis_url": url})
        timed(rows, "compose", "s1_user_to_redis", f"Redis {url}", lambda: user_to_redis(compose, progress=False))
        timed(rows, "compose", "s1_feature_to_feast", "Feast, Redis", lambda: feature_to_feast(compose, url))
    if args.es_url:
        es = load_settings({"data_dir": settings.data_dir, "profile": "compose", "es_url": args.es_url})
        timed(rows, "compose", "s2_item_to_es", f"Elasticsearch {args.es_url}", lambda: item_to_es(es, progress=False))
    if args.triton:
        from scripts.native_servers import TritonServer, ensure_triton_venv

        venv = ensure_triton_venv(run_setup=True)
        with TritonServer(python_model_repository_dir(settings.paths), venv=venv.root) as server:
            grpc_url = server.grpc_url
            check = lambda: check_offline_and_online(settings, triton_url=grpc_url)  # noqa: E731
            timed(rows, "compose", "s3_check_offline_and_online", f"Triton gRPC {grpc_url}", check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="artifacts (default: $RECSYS_DATA_DIR)")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--es-url", default=None, help="also publish to this Elasticsearch")
    parser.add_argument("--triton", action="store_true", help="also check against a real tritonserver")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    source = ArtifactPaths.from_env(args.data_dir).data_dir
    scratch = scratch_data_dir(source)
    settings = load_settings({"data_dir": scratch, "profile": "embedded"})
    rows: list[Row] = []
    print(f"publishing the artifacts of {source} (scratch copy {scratch})")
    try:
        warm_imports(rows)
        bench_embedded(rows, settings)
        bench_compose(rows, settings, args)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    out = source / "benchmarks" / "publish.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data_dir": str(source), "stages": rows}, indent=2) + "\n")
    published = sum(r["seconds"] for r in rows if r["profile"] != "-")
    print(f"publish total {published:.1f} s (imports apart); written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
