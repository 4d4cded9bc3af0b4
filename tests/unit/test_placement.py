from __future__ import annotations

from comfy_fleet.policies.placement import COMFYUI_LABEL, discovered_endpoints, node_for


def node(nid: str, addr: str, *, alive: bool = True, comfy: bool = False, label: str | None = None) -> dict:
    return {
        "NodeID": nid, "Alive": alive, "NodeManagerAddress": addr,
        "Resources": {"CPU": 1.0, **({"comfyui": 1.0} if comfy else {})},
        "Labels": {COMFYUI_LABEL: label} if label else {},
    }


def test_label_wins_then_address_then_anywhere() -> None:
    nodes = [node("head", "10.0.0.1"), node("gpu1", "10.0.0.2", comfy=True),
             node("gpu2", "127.0.0.1", comfy=True, label="127.0.0.1:9001")]
    assert node_for("127.0.0.1:9001", nodes) == "gpu2"
    assert node_for("10.0.0.2:8188", nodes) == "gpu1"
    assert node_for("10.0.0.9:8188", nodes) is None
    assert node_for("127.0.0.1:9002", nodes) is None  # loopback matches every node: anywhere
    assert node_for("localhost:8188", nodes) is None


def test_dead_nodes_and_resource_preference() -> None:
    nodes = [node("a", "10.0.0.2"), node("b", "10.0.0.2", comfy=True), node("c", "10.0.0.3", alive=False)]
    assert node_for("10.0.0.2:8188", nodes) == "b"
    assert node_for("10.0.0.3:8188", nodes) is None


def test_discovery_lists_comfyui_nodes_only() -> None:
    nodes = [node("head", "10.0.0.1"), node("g1", "10.0.0.2", comfy=True),
             node("g2", "127.0.0.1", comfy=True, label="127.0.0.1:9001"),
             node("g3", "10.0.0.4", comfy=True, alive=False), node("g4", "fd00::4", comfy=True)]
    assert discovered_endpoints(nodes, 8188) == {
        "10.0.0.2:8188": "g1", "127.0.0.1:9001": "g2", "[fd00::4]:8188": "g4",
    }
