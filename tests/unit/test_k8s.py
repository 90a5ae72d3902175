"""k8s/: the Kustomize base and overlay render to valid Kubernetes objects that match the service.

Each kustomization is rendered by a small renderer here (the subset of Kustomize the files use:
``resources``, ``labels``, ``namespace``, ``images`` and JSON 6902 ``patches``; any other key fails the
test, so a new feature in the files needs a renderer change, not a silent pass). Every rendered object is
validated with ``kubernetes-validate`` against the bundled OpenAPI schemas of a recent Kubernetes
release, strictly (unknown fields are errors). Then the project's own rules: probes on ``/ready`` and
``/health``, requests and limits, the HPA and PDB select the Deployment's pods, the ConfigMap holds only
known, valid, non-secret settings, and secrets come from a Secret that the repository does not ship.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from data_exchange_center.settings import ENV_PREFIX, Settings, load_settings

pytestmark = pytest.mark.unit

REPO_DIR = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_DIR / "k8s"
BASE_DIR = K8S_DIR / "base"
OVERLAY_DIRS = sorted(path.parent for path in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.33.0"
RENDERER_KEYS = {"apiVersion", "kind", "resources", "labels", "namespace", "images", "patches"}
CLUSTER_SCOPED_KINDS = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
SECRET_FIELDS = {name for name, field in Settings.model_fields.items() if "Secret" in str(field.annotation)}
SERVICE_PORT = 5000


# ---- a renderer for the subset of Kustomize that k8s/ uses ---------------------------------------------


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - RENDERER_KEYS
    assert not unknown, f"{directory}/kustomization.yaml uses {sorted(unknown)}: teach render_kustomization them"
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render_kustomization(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for label_set in spec.get("labels", []):
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label_set["pairs"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in all_containers(objects):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for patch in spec.get("patches", []):
        apply_json_patch(objects, patch["target"], yaml.safe_load(patch["patch"]))
    return objects


def apply_json_patch(objects: list[dict[str, Any]], target: dict[str, str], operations: list[dict[str, Any]]) -> None:
    matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
    assert len(matches) == 1, f"patch target {target} matches {len(matches)} objects"
    for operation in operations:
        *parents, last = operation["path"].strip("/").split("/")
        node: Any = matches[0]
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        assert operation["op"] in ("replace", "add"), f"unsupported patch op {operation['op']}"
        if operation["op"] == "replace":
            assert last in node, f"replace of a missing path {operation['path']}"
        node[last] = copy.deepcopy(operation["value"])


def all_containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pod_specs = [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]
    return [c for spec in pod_specs for c in spec.get("containers", []) + spec.get("initContainers", [])]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


KUSTOMIZATIONS = [BASE_DIR, *OVERLAY_DIRS]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=[str(p.relative_to(K8S_DIR)) for p in KUSTOMIZATIONS])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render_kustomization(request.param)


# ---- valid Kubernetes ----------------------------------------------------------------------------------


def test_there_is_an_overlay() -> None:
    assert OVERLAY_DIRS, "k8s/overlays/ has no kustomization"


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_validator_rejects_a_broken_deployment(rendered: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(one(rendered, "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [5000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_names_are_unique_per_kind(rendered: list[dict[str, Any]]) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert len(keys) == len(set(keys)), keys


# ---- the Deployment serves the app the way the code expects -------------------------------------------


def service_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "recsys-online")


def test_probes_use_ready_and_health_on_the_service_port(rendered: list[dict[str, Any]]) -> None:
    container = service_container(rendered)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": SERVICE_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_resources_have_requests_and_limits(rendered: list[dict[str, Any]]) -> None:
    resources = service_container(rendered)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{kind} needs cpu and memory"


def test_hpa_pdb_and_service_select_the_deployment_pods(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}  # fmt: skip
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB would block every drain"
    service = one(rendered, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_artifacts_are_mounted_read_only_at_the_data_dir(rendered: list[dict[str, Any]]) -> None:
    settings = one(rendered, "ConfigMap")["data"]
    mounts = {m["mountPath"]: m for m in service_container(rendered)["volumeMounts"]}
    data_mount = mounts[settings["RECSYS_DATA_DIR"]]
    assert data_mount["readOnly"] is True
    volumes = {v["name"]: v for v in one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[data_mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {o["metadata"]["name"] for o in rendered if o["kind"] == "PersistentVolumeClaim"}
    assert settings["RECSYS_ES_CA_CERTS"].startswith(next(p for p in mounts if p == "/es-ca") + "/")


# ---- settings from the ConfigMap, secrets from a Secret ------------------------------------------------


def test_configmap_holds_known_valid_non_secret_settings(rendered: list[dict[str, Any]]) -> None:
    data = one(rendered, "ConfigMap")["data"]
    recsys_keys = {key for key in data if key.startswith(ENV_PREFIX)}
    fields = {key.removeprefix(ENV_PREFIX).lower() for key in recsys_keys}
    assert fields <= set(Settings.model_fields), f"unknown settings: {sorted(fields - set(Settings.model_fields))}"
    assert not fields & SECRET_FIELDS, f"secrets in the ConfigMap: {sorted(fields & SECRET_FIELDS)}"
    settings = load_settings(environ=dict(data))  # raises SettingsError naming a bad value
    assert settings.profile == "compose"
    assert settings.port == SERVICE_PORT


def test_secrets_come_from_a_secret_the_repository_does_not_ship(rendered: list[dict[str, Any]]) -> None:
    assert not [o for o in rendered if o["kind"] == "Secret"], "k8s/ must not ship a Secret (no working defaults)"
    env = {item["name"]: item for item in service_container(rendered)["env"]}
    for field in ("es_password", "api_key"):
        name = f"{ENV_PREFIX}{field.upper()}"
        assert "value" not in env[name], f"{name} has a literal value"
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "recsys-secrets"
    assert env["RECSYS_ES_PASSWORD"]["valueFrom"]["secretKeyRef"].get("optional", False) is False


def test_the_overlay_changes_what_it_says(tmp_path: Path) -> None:
    for overlay in OVERLAY_DIRS:
        objects = render_kustomization(overlay)
        namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("namespace")
        assert all(o["metadata"].get("namespace") == namespace for o in objects if o["kind"] != "Namespace")
        assert service_container(objects)["image"] != service_container(render_kustomization(BASE_DIR))["image"]
