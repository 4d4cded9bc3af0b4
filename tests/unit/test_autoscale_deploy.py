"""The autoscaling deploy files: deploy/kubernetes/ (KubeRay RayService and image recipe) and the
autoscaling bounds of ray_cluster.yaml and serve_config.yaml, which must agree."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfy_fleet.policies.placement import COMFYUI_LABEL
from serve_app import app as app_module

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((K8S / "rayservice.yaml").read_text()))
    assert len(docs) == 1 and isinstance(docs[0], dict)
    return docs[0]


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    containers = spec["template"]["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return list(containers)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_rayservice_has_the_fields_kuberay_requires(service: dict[str, Any]) -> None:
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    assert service["metadata"]["name"]
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    # KubeRay passes rayStartParams to `ray start` as text.
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    _containers(head)
    groups = cluster["workerGroupSpecs"]
    assert groups and all(g["groupName"] and isinstance(g["rayStartParams"], dict) for g in groups)
    for g in groups:
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        _containers(g)
    import ray

    assert cluster["rayVersion"] == ray.__version__


def test_serve_config_v2_is_the_serve_config_with_autoscaling_on(
    service: dict[str, Any], serve_config: dict[str, Any]
) -> None:
    from ray.serve.schema import ServeDeploySchema

    text = service["spec"]["serveConfigV2"]
    assert isinstance(text, str)  # KubeRay wants the Serve config as one YAML string
    v2 = yaml.safe_load(text)
    ServeDeploySchema.model_validate(v2) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(v2)
    ours, theirs = v2["applications"][0], serve_config["applications"][0]
    assert ours["import_path"] == theirs["import_path"]
    assert set(ours["args"]) == set(theirs["args"])
    assert v2["http_options"]["port"] == serve_config["http_options"]["port"]
    settings = app_module.settings_from_args(ours["args"], {"API_KEYS": "k", "DATABASE_URL": "postgresql://db/x"})
    assert settings.autoscale and settings.comfyui_discovery


def test_gpu_workers_run_comfyui_beside_a_ray_worker_with_the_resource_and_label(
    service: dict[str, Any],
) -> None:
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    params = group["rayStartParams"]
    # KubeRay puts the value on the command line as is: a JSON object inside quotes.
    assert json.loads(json.loads(params["resources"])) == {"comfyui": 1}
    assert params["labels"].startswith(f"{COMFYUI_LABEL}=$MY_POD_IP:")
    containers = {c["name"]: c for c in _containers(group)}
    assert set(containers) == {"ray-worker", "comfyui"}
    comfy = containers["comfyui"]
    assert comfy["command"] == ["/opt/comfy-fleet/deploy/kubernetes/comfyui-entrypoint.sh"]
    assert comfy["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert comfy["readinessProbe"]["httpGet"]["path"] == "/comfy-fleet/cleanup/info"
    for c in containers.values():
        assert _env(c)["MY_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # Secrets come from a Secret, never from the manifest.
    assert containers["ray-worker"]["envFrom"] == [{"secretRef": {"name": "comfy-fleet-env"}}]
    text = (K8S / "rayservice.yaml").read_text()
    assert not re.search(r"(DATABASE_URL|AWS_SECRET_ACCESS_KEY|API_KEYS|WEBHOOK_SECRET)\s*[:=]", text)


def test_autoscaling_bounds_agree_everywhere(service: dict[str, Any], serve_config: dict[str, Any]) -> None:
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    (group,) = cluster["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["idleTimeoutSeconds"] > 0
    v2_args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert int(v2_args["AUTOSCALE_MIN_HOSTS"]) == group["minReplicas"]
    assert int(v2_args["AUTOSCALE_MAX_HOSTS"]) == group["maxReplicas"]
    # The cluster launcher's: the GPU worker type's bounds and the service's.
    ray_cluster = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    gpu = ray_cluster["available_node_types"]["gpu_worker"]
    args = serve_config["applications"][0]["args"]
    assert args["AUTOSCALE"] == "true"
    assert int(args["AUTOSCALE_MIN_HOSTS"]) == gpu["min_workers"] < gpu["max_workers"]
    assert int(args["AUTOSCALE_MAX_HOSTS"]) == gpu["max_workers"] <= ray_cluster["max_workers"]
    assert ray_cluster["idle_timeout_minutes"] > 0
    # A drained host Ray keeps comes back only after Ray had time to remove it.
    assert float(args["AUTOSCALE_RELEASE_GRACE_S"]) > ray_cluster["idle_timeout_minutes"] * 60


def test_image_recipe_matches_the_lock_and_installs_comfyui_with_the_extension() -> None:
    import ray

    text = (K8S / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M)
    assert image and image.group(1).startswith(f"rayproject/ray:{ray.__version__}-py311")
    assert "--require-hashes -r requirements.lock" in text
    assert "deploy/comfyui/install.sh" in text and (ROOT / "deploy/comfyui/install.sh").is_file()
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(rf"^ray(\[[^\]]*\])?=={re.escape(ray.__version__)}\b", lock, re.M)


def test_comfyui_entrypoint_parses_and_never_binds_every_address() -> None:
    script = K8S / "comfyui-entrypoint.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    code = [ln for ln in script.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert any('--listen "$MY_POD_IP"' in ln for ln in code)
    assert not any("0.0.0.0" in ln for ln in code)
