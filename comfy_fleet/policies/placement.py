"""Where an endpoint actor runs, and which endpoints a Ray cluster offers (pure functions over
the node list of `ray.nodes()`).

An endpoint actor belongs on the node of its ComfyUI, so its websocket and file clean-up stay
local. A node says it runs a ComfyUI by the custom resource `comfyui` (see ray_cluster.yaml)
and, optionally, by the label `comfy-fleet/comfyui` = "host:port" of that ComfyUI (needed when
several nodes share an address, as in tests on one machine).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from comfy_fleet.config import is_loopback as _is_loopback

#: The node label naming the ComfyUI that runs on the node.
COMFYUI_LABEL = "comfy-fleet/comfyui"

Node = Mapping[str, Any]


def _host(endpoint: str) -> str:
    host, _, _port = endpoint.rpartition(":")
    return host.strip("[]")


def node_for(endpoint: str, nodes: Iterable[Node], resource: str = "comfyui") -> str | None:
    """The NodeID the endpoint's actor should run on, or None (anywhere).

    First a live node labelled with this endpoint; then the one live node whose address is
    the endpoint's host (preferring nodes with the ComfyUI resource). A loopback endpoint
    without a label matches no node: every node has that address.
    """
    alive = [n for n in nodes if n.get("Alive")]
    for n in alive:
        if (n.get("Labels") or {}).get(COMFYUI_LABEL) == endpoint:
            return str(n["NodeID"])
    host = _host(endpoint)
    if _is_loopback(host):
        return None
    matches = [n for n in alive if n.get("NodeManagerAddress") == host]
    with_resource = [n for n in matches if (n.get("Resources") or {}).get(resource, 0) > 0]
    chosen = with_resource or matches
    return str(chosen[0]["NodeID"]) if chosen else None


def discovered_endpoints(nodes: Iterable[Node], port: int, resource: str = "comfyui") -> dict[str, str]:
    """Discovery mode: every live node with the ComfyUI resource offers one endpoint, named by
    its label or `<node address>:<port>`. Returns endpoint → NodeID."""
    found: dict[str, str] = {}
    for n in nodes:
        if not n.get("Alive") or (n.get("Resources") or {}).get(resource, 0) <= 0:
            continue
        label = (n.get("Labels") or {}).get(COMFYUI_LABEL)
        address = str(n.get("NodeManagerAddress"))
        name = label or (f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
        found[name] = str(n["NodeID"])
    return found
