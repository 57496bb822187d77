"""Every manifest in cluster/ and infra/ parses and validates; entrypoints name files that exist.

Kubernetes core kinds are validated with kubernetes-validate (offline JSON schemas). KubeRay kinds have
no schema in that package: their pod templates are validated as core ``PodTemplate`` objects and their
KubeRay-specific fields against a small schema of the fields we use (names and types from the KubeRay
v1 CRDs), so a typo such as ``workerGroupSpec`` or a string where an int belongs fails here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes_validate import validate

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.30"
KUBERAY_KINDS = {"RayCluster", "RayJob"}

_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer"},
                   "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                   "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
                   "template": {"type": "object"}},
    "additionalProperties": False,
}
KUBERAY_SCHEMAS = {
    "RayCluster": {
        "type": "object",
        "required": ["headGroupSpec"],
        "properties": {
            "rayVersion": {"type": "string"},
            "enableInTreeAutoscaling": {"type": "boolean"},
            "autoscalerOptions": {"type": "object", "properties": {"idleTimeoutSeconds": {"type": "integer"}}},
            "headGroupSpec": {**_GROUP, "required": ["rayStartParams", "template"]},
            "workerGroupSpecs": {"type": "array", "items": {**_GROUP, "required": ["groupName", "rayStartParams",
                                                                                    "template"]}},
        },
        "additionalProperties": False,
    },
    "RayJob": {
        "type": "object",
        "required": ["entrypoint"],
        "properties": {
            "entrypoint": {"type": "string"},
            "clusterSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "rayClusterSpec": {"type": "object"},
            "runtimeEnvYAML": {"type": "string"},
            "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
            "activeDeadlineSeconds": {"type": "integer"},
            "backoffLimit": {"type": "integer"},
            "shutdownAfterJobFinishes": {"type": "boolean"},
            "ttlSecondsAfterFinished": {"type": "integer"},
        },
        "additionalProperties": False,
    },
}

MANIFESTS = sorted([*ROOT.glob("cluster/*.yaml"), *ROOT.glob("infra/k8s/*.yaml")])


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pod_templates(kind: str, spec: dict) -> list[dict]:
    if kind == "RayCluster":
        return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec.get("workerGroupSpecs", []))]
    return []


@pytest.mark.parametrize("path", [p for p in MANIFESTS if "apiVersion" in p.read_text()], ids=lambda p: p.name)
def test_kubernetes_manifest_validates(path: Path) -> None:
    for doc in _docs(path):
        kind = doc["kind"]
        if kind in KUBERAY_KINDS:
            assert doc["apiVersion"] == "ray.io/v1"
            jsonschema.validate(doc["spec"], KUBERAY_SCHEMAS[kind])
            for template in _pod_templates(kind, doc["spec"]):
                validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                          "template": template}, K8S_VERSION, strict=True)
        else:
            validate(doc, K8S_VERSION, strict=True)


def test_kuberay_schema_catches_a_typo() -> None:
    doc = _docs(ROOT / "cluster" / "raycluster.yaml")[0]
    spec = dict(doc["spec"])
    spec["workerGroupSpec"] = spec.pop("workerGroupSpecs")
    with pytest.raises(jsonschema.ValidationError, match="workerGroupSpec"):
        jsonschema.validate(spec, KUBERAY_SCHEMAS["RayCluster"])


def _python_target(command: list[str]) -> Path:
    script = command[command.index("python") + 1]
    return ROOT / script


def test_entrypoints_name_existing_files() -> None:
    rayjob = _docs(ROOT / "cluster" / "rayjob.yaml")[0]
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert _python_target(argv).is_file()
    config = argv[argv.index("--config") + 1]
    assert (ROOT / config).is_file(), f"RayJob entrypoint names {config}, which does not exist"

    cron = _docs(ROOT / "cluster" / "retrain-cronjob.yaml")[0]
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert _python_target(command).is_file()


def test_compose_and_launcher_parse_and_hold_no_secrets() -> None:
    for path in [*ROOT.glob("infra/compose/*.yaml"), ROOT / "cluster" / "cluster-launcher.yaml",
                 ROOT / "cluster" / "runtime_env.yaml", *MANIFESTS]:
        text = path.read_text()
        assert _docs(path), f"{path} is empty"
        assert "AWS_SECRET_ACCESS_KEY:" not in text.replace("AWS_SECRET_ACCESS_KEY: ${", ""), path
    compose = _docs(ROOT / "infra" / "compose" / "docker-compose.yaml")[0]
    assert {"postgres", "objectstore", "mlflow"} <= set(compose["services"])
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"compose port {port} is exposed beyond loopback"
