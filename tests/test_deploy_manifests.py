"""Offline checks of the Kubernetes manifests in k8s/: schemas, kustomize rendering, and the promises
docs/deployment.md makes about them (GPU request, probes on a READY worker, non-root, ports).

kubernetes-validate ships the Kubernetes JSON schemas, so nothing here needs a cluster or the network.
kustomize is not on PyPI and Debian bookworm's kubectl (1.20) is too old, so the kustomizations are
rendered by a small resolver of the subset they use (resources, images, JSON 6902 patches); where a
kubectl binary is on PATH its `kubectl kustomize` output must match the resolver's.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "cpu": K8S / "overlays" / "cpu", "kserve": K8S / "kserve",
                  "kserve-predictor": K8S / "kserve-predictor", "kserve-predictor-grpc": K8S / "kserve-predictor-grpc"}
KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]
"""Oldest and newest Kubernetes the manifests are checked against (HPA v2 and PDB v1 are GA in both)."""
HEALTHCHECK = ["python3", "/opt/facekp/healthcheck.py", "--quiet"]


# --- a resolver for the subset of kustomize the kustomizations use --------------------------------------
def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _apply_op(doc: dict, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    elif op["op"] in ("add", "replace"):
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            else:
                node[index] = copy.deepcopy(op["value"])
        else:
            if op["op"] == "replace" and last not in node:
                raise KeyError(f"replace of missing {op['path']}")
            node[last] = copy.deepcopy(op["value"])
    else:
        raise NotImplementedError(f"patch op {op['op']} is not used by k8s/ (add it here if needed)")


def _set_images(doc: dict, images: list[dict]) -> None:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def render(folder: Path) -> list[dict]:
    """The documents `kubectl kustomize folder` prints, for the fields k8s/ uses."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "images", "patches"}
    assert set(kustomization) <= known, f"{folder}: the test's resolver lacks {set(kustomization) - known}"
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load(patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text())
        targets = [doc for doc in docs if doc["kind"] == patch["target"]["kind"]
                   and doc["metadata"]["name"] == patch["target"]["name"]]
        assert targets, f"{folder}: patch target {patch['target']} matches nothing"
        for doc in targets:
            for op in ops:
                _apply_op(doc, op)
    for doc in docs:
        _set_images(doc, kustomization.get("images", []))
    return docs


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="module", params=list(KUSTOMIZATIONS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(KUSTOMIZATIONS[request.param])


# --- schema and rendering -------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", ["base", "cpu"])
def test_rendered_manifests_validate_against_the_kubernetes_schemas(name, version):
    docs = render(KUSTOMIZATIONS[name])
    assert {doc["kind"] for doc in docs} == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                                             "PodDisruptionBudget"}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(part) for part in err.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {version} at {where}: "
                        f"{err.message}")


def test_the_resolver_matches_kubectl_kustomize(rendered):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH; the resolver above renders the kustomizations alone")
    name, docs = rendered
    result = subprocess.run([kubectl, "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    key = lambda doc: (doc["kind"], doc["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(result.stdout), key=key) == sorted(docs, key=key)


# --- what the deployment promises ----------------------------------------------------------------
def _container(docs: list[dict]) -> dict:
    (container,) = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_gpu_base_requests_one_gpu_and_the_cpu_overlay_none():
    gpu, cpu = _container(render(KUSTOMIZATIONS["base"])), _container(render(KUSTOMIZATIONS["cpu"]))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert gpu["image"].endswith(":gpu") and cpu["image"].endswith(":cpu")
    for resources in (gpu["resources"], cpu["resources"]):
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    assert "nvidia.com/gpu" not in json.dumps(by_kind(render(KUSTOMIZATIONS["cpu"]))["Deployment"])


@pytest.mark.parametrize("name", ["base", "cpu"])
def test_probes_check_a_ready_worker_through_the_healthcheck_script(name):
    container = _container(render(KUSTOMIZATIONS[name]))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == HEALTHCHECK, probe
        assert container[probe]["timeoutSeconds"] >= 5, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180, "TorchServe needs minutes to start"
    assert (REPO / "config" / "healthcheck.py").is_file()
    assert "/opt/facekp/healthcheck.py" in (REPO / "Dockerfile").read_text()


@pytest.mark.parametrize("name", ["base", "cpu"])
def test_pod_runs_as_non_root_with_a_read_only_root_filesystem(name):
    pod = by_kind(render(KUSTOMIZATIONS[name]))["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", "/home/model-server", "/opt/facekp/config"} <= mounts
    config = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config["configMap"]["name"] == by_kind(render(KUSTOMIZATIONS[name]))["ConfigMap"]["metadata"]["name"]


def test_configmap_holds_the_images_container_config():
    configmap = by_kind(render(KUSTOMIZATIONS["base"]))["ConfigMap"]
    shipped = (REPO / "config" / "config.container.properties").read_text()
    assert configmap["data"]["config.properties"] == shipped
    settings = dict(line.split("=", 1) for line in shipped.splitlines() if line and not line.startswith("#"))
    assert settings["inference_address"] == "http://0.0.0.0:8080"
    assert settings["metrics_address"] == "http://0.0.0.0:8082"
    assert settings["management_address"].startswith("http://127.0.0.1:"), "management must stay in the pod"


def test_service_exposes_inference_and_annotated_metrics_only():
    docs = by_kind(render(KUSTOMIZATIONS["base"]))
    service = docs["Service"]
    assert sorted(port["port"] for port in service["spec"]["ports"]) == [8080, 8082]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "8082"
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]


# --- KServe -------------------------------------------------------------------------------------
def test_kserve_inference_service_has_the_required_fields():
    (isvc,) = render(KUSTOMIZATIONS["kserve"])
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["storageUri"].split("://")[0] in {"pvc", "s3", "gs", "https", "azureblob", "hdfs", "oci"}
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kserve_torchserve_config_matches_the_model_config():
    """KServe's layout: config/config.properties beside model-store/keypoints.mar, same batching as the .mar."""
    lines = (K8S / "kserve" / "config" / "config.properties").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert settings["model_store"] == "/mnt/models/model-store"
    snapshot = json.loads(settings["model_snapshot"])
    version = snapshot["models"]["keypoints"]["1.0"]
    assert version["marName"] == "keypoints.mar"
    for model, config_file in (("keypoints", "model-config.yaml"), ("faces", "faces-config.yaml")):
        version = snapshot["models"][model]["1.0"]
        assert version["marName"] == f"{model}.mar"
        model_config = yaml.safe_load((REPO / "config" / config_file).read_text())
        for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
            assert version[key] == model_config[key], (model, key)
    assert snapshot["modelCount"] == len(snapshot["models"])
    assert settings["disable_token_authorization"] == "true"


# --- InferenceServices, strictly: KServe's own API models (kserve.models, kubernetes.client) ------------
def openapi_errors(value, type_name: str, where: str = "") -> list[str]:
    """Every field the API does not know, and every value of the wrong type, under `where`.

    The kserve package's generated models carry KServe's CRD schema (openapi_types, attribute_map)
    and reuse kubernetes.client's for the core types, so this is the CRD's schema, offline.
    """
    import kserve.models
    import kubernetes.client

    if type_name.lower().startswith("list["):  # kserve writes list[X], kubernetes.client List[X]
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, item in enumerate(value) for e in openapi_errors(item, type_name[5:-1], f"{where}[{i}]")]
    if type_name.startswith(("dict(", "Dict[")):  # dict(str, X) or Dict[str, X]
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [e for key, item in value.items() for e in openapi_errors(item, inner, f"{where}.{key}")]
    primitive = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
                 "ResourceQuantity": (str, int, float), "datetime": (str,)}
    if type_name in primitive:
        ok = isinstance(value, primitive[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: {value!r} is not {type_name}"]
    model = getattr(kserve.models, type_name, None) or getattr(kubernetes.client, type_name, None)
    if model is None:
        return [f"{where}: the checker does not know type {type_name}"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name})"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = [f"{where}.{key}: unknown field of {type_name}" for key in value if key not in by_json]
    for key, item in value.items():
        if key in by_json:
            errors += openapi_errors(item, model.openapi_types[by_json[key]], f"{where}.{key}")
    return errors


@pytest.mark.parametrize("name", ["kserve", "kserve-predictor", "kserve-predictor-grpc"])
def test_inference_services_validate_strictly_against_kserves_api(name):
    (isvc,) = render(KUSTOMIZATIONS[name])
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert openapi_errors(isvc, "V1beta1InferenceService", "InferenceService") == []


def test_the_strict_check_finds_a_misspelt_field():
    (isvc,) = render(KUSTOMIZATIONS["kserve-predictor"])
    isvc["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    errors = openapi_errors(isvc, "V1beta1InferenceService", "InferenceService")
    assert any("httpGett: unknown field" in e for e in errors) and any("'one' is not int" in e for e in errors)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_predictor_pod_validates_against_the_kubernetes_schema(version):
    """The custom predictor's pod fields are core Kubernetes: checked by the Pod schema, strictly."""
    (isvc,) = render(KUSTOMIZATIONS["kserve-predictor"])
    predictor = isvc["spec"]["predictor"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "facekp-predictor"},
           "spec": {key: predictor[key] for key in ("containers", "volumes", "securityContext")}}
    kubernetes_validate.validate(pod, version, strict=True)


def test_torchserve_runtime_speaks_v2_with_the_matching_envelope():
    (isvc,) = render(KUSTOMIZATIONS["kserve"])
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    lines = (K8S / "kserve" / "config" / "config.properties").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert settings["service_envelope"] == "kservev2"


def test_grpc_predictor_exposes_the_containers_grpc_port_as_h2c():
    (isvc,) = render(KUSTOMIZATIONS["kserve-predictor-grpc"])
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert isvc["metadata"]["name"] == "facekp-predictor-grpc"
    assert container["ports"] == [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    assert container["readinessProbe"]["tcpSocket"]["port"] == container["livenessProbe"]["tcpSocket"]["port"] == 8081
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '"--grpc_port", "8081"' in dockerfile, "the image's predictor must serve gRPC on the port exposed here"


def test_custom_predictor_runs_the_kserve_target_with_v2_probes():
    (isvc,) = render(KUSTOMIZATIONS["kserve-predictor"])
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container" and container["image"].startswith("facekp-kserve:")
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert isvc["spec"]["predictor"]["securityContext"]["runAsNonRoot"] is True
    assert "FROM base AS kserve" in (REPO / "Dockerfile").read_text()


# --- autoscaling on queue latency ------------------------------------------------------------------
ADAPTER_RULES = K8S / "metrics" / "prometheus-adapter-rules.yaml"


def adapter_rules() -> list[dict]:
    configmap = yaml.safe_load(ADAPTER_RULES.read_text())
    return yaml.safe_load(configmap["data"]["config.yaml"])["rules"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_adapter_rules_configmap_validates(version):
    kubernetes_validate.validate(yaml.safe_load(ADAPTER_RULES.read_text()), version, strict=True)


def test_hpa_scales_on_the_queue_latency_the_adapter_serves():
    hpa = by_kind(render(KUSTOMIZATIONS["base"]))["HorizontalPodAutoscaler"]
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == ["torchserve_queue_latency_ms"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    (rule,) = adapter_rules()
    assert rule["name"]["as"] == "torchserve_queue_latency_ms"
    assert "ts_queue_latency_microseconds" in rule["metricsQuery"]
    assert "ts_inference_requests_total" in rule["metricsQuery"]
    pod = by_kind(render(KUSTOMIZATIONS["base"]))["Deployment"]["spec"]["template"]["metadata"]
    assert pod["annotations"]["prometheus.io/scrape"] == "true" and pod["annotations"]["prometheus.io/port"] == "8082"
    settings = dict(line.split("=", 1) for line in (REPO / "config" / "config.container.properties").read_text()
                    .splitlines() if line and not line.startswith("#"))
    assert settings["metrics_mode"] == "prometheus"


def test_liveness_is_lenient_so_load_alone_never_restarts_the_pod():
    """docs/reliability.md: under 256 clients the probe command took at most ~0.2 s; liveness allows a minute."""
    container = _container(render(KUSTOMIZATIONS["base"]))
    live = container["livenessProbe"]
    assert live["timeoutSeconds"] >= 6 and live["periodSeconds"] * live["failureThreshold"] >= 60
    ready = container["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] < live["periodSeconds"] * live["failureThreshold"]
