"""The Feast side of the compose profile, for real: the feature server's worker settings and the registry switch.

What these tests prove:
- the ``feast serve`` command of ``docker-compose.yml`` uses only options that Feast 0.67's CLI has, and
  run natively with those options its workers are never recycled (1,100 requests, same worker PIDs),
  while the same server with a small ``--max-requests`` does recycle them (so the check can fail);
- a publish replaces ``data/registry.db`` by a rename (a new inode; never a partly written file for a
  reader polling it during the publish), keeps the previous version's snapshot, and leaves no staging file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from data_exchange_center import online_layout as L
from data_exchange_center.settings import load_settings
from offline_to_online.rank.stages import feature_to_feast
from scripts.native_servers import free_port, tail
from tests.fixtures_artifacts import TinyArtifacts, write_tiny_artifacts

pytestmark = pytest.mark.integration
REPO_DIR = Path(__file__).resolve().parents[2]


def compose_feast_command() -> list[str]:
    """The feast service's command in docker-compose.yml, ``${VAR:-default}`` replaced by its default."""
    compose = yaml.safe_load((REPO_DIR / "docker-compose.yml").read_text())
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(part)) for part in compose["services"]["feast"]["command"]]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    tiny = write_tiny_artifacts(tmp_path_factory.mktemp("feast"))
    feature_to_feast(load_settings({"data_dir": tiny.paths.data_dir, "profile": "embedded"}))
    return tiny


def start_feast(repo: Path, options: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["feast", "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"feast serve exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"feast serve not healthy after 120 s:\n{tail(log_path)}")


@pytest.fixture
def feast_servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def worker_pids(proc: subprocess.Popen[bytes]) -> set[int]:
    """The gunicorn workers: children of the ``feast serve`` process (the gunicorn master)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return {int(pid) for pid in children}


def hammer(url: str, userid: int, n: int) -> list[int]:
    body = json.dumps({"feature_service": L.USER_FEATURE_SERVICE, "entities": {"userid": [userid]}}).encode()
    statuses = []
    for _ in range(n):
        request = urllib.request.Request(url + "/get-online-features", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                statuses.append(reply.status)
        except OSError:
            statuses.append(0)
    return statuses


def test_the_compose_command_uses_options_that_feast_serve_has() -> None:
    command = compose_feast_command()
    assert command[:4] == ["feast", "-c", "/feature_repo", "serve"]
    assert int(option(command, "--workers")) >= 2 and option(command, "--max-requests") == "0"
    help_text = subprocess.run(["feast", "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for name in [part for part in command[4:] if part.startswith("-")]:
        assert re.search(rf"(^|[\s,]){re.escape(name)}[\s,]", help_text), f"feast serve has no option {name}"


def test_the_compose_worker_settings_never_recycle_a_worker(
    tiny: TinyArtifacts, feast_servers: list[subprocess.Popen[bytes]]
) -> None:
    command = compose_feast_command()
    options = command[command.index("--workers") :]  # the tuning options, as compose passes them
    repo, userid = tiny.paths.feature_repo_dir, int(tiny.userids[3])
    proc, url = start_feast(repo, options, tiny.paths.data_dir / "feast-compose.log")
    feast_servers.append(proc)
    time.sleep(2)  # let every worker boot
    before = worker_pids(proc)
    assert len(before) == int(option(command, "--workers"))
    statuses = hammer(url, userid, 1100)  # past Feast's default --max-requests 1000 (+ jitter 50)
    assert statuses.count(200) == len(statuses)
    assert worker_pids(proc) == before, "a worker was recycled"

    control, control_url = start_feast(repo, ["--workers", "1", "--max-requests", "40", "--max-requests-jitter", "0"],
                                       tiny.paths.data_dir / "feast-control.log")  # fmt: skip
    feast_servers.append(control)
    time.sleep(2)
    first = worker_pids(control)
    hammer(control_url, userid, 100)
    time.sleep(2)
    assert worker_pids(control) != first, "the control server never recycled its worker: the check is blind"


def test_a_publish_switches_the_registry_by_a_rename(tmp_path: Path) -> None:
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto

    tiny = write_tiny_artifacts(tmp_path)
    settings = load_settings({"data_dir": tmp_path, "profile": "embedded"})
    first = feature_to_feast(settings)
    repo = tiny.paths.feature_repo_dir
    registry = repo / "data" / "registry.db"
    inode = registry.stat().st_ino
    problems: list[str] = []
    reads = [0]
    stop = threading.Event()

    def poll_registry() -> None:  # what a feature server re-reading the registry sees
        while not stop.is_set():
            proto = RegistryProto()
            try:
                proto.ParseFromString(registry.read_bytes())
            except Exception as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            reads[0] += 1
            services = {s.spec.name for s in proto.feature_services}
            if services != {L.USER_FEATURE_SERVICE, L.ITEM_FEATURE_SERVICE}:
                problems.append(f"registry read with feature services {sorted(services)}")

    poller = threading.Thread(target=poll_registry)
    poller.start()
    try:
        second = feature_to_feast(settings)
    finally:
        stop.set()
        poller.join()
    assert problems == [] and reads[0] > 10
    assert registry.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert not list((repo / "data").glob(".registry-staging-*"))
    assert L.list_versions(L.feature_versions_dir(repo)) == sorted([first.version, second.version])
    spec_of_live = L.feature_spec_of_version(repo, second.version)
    live_spec = L.live_feature_spec_path(repo).read_text()
    assert spec_of_live.read_text() == live_spec == tiny.paths.feature_spec_path.read_text()
    third = feature_to_feast(settings)
    assert L.list_versions(L.feature_versions_dir(repo)) == sorted([second.version, third.version])
