"""The ingress's node catalog: one fetch per digest, then none."""

from __future__ import annotations

from typing import Any

from comfy_fleet.workflows.node_catalog import NodeCatalog


async def test_one_fetch_per_digest_and_draining_left_out() -> None:
    infos = {"d1": {"A": {}}, "d2": {"A": {}, "B": {}}}
    calls: list[str] = []

    async def fetch(digest: str) -> dict[str, Any] | None:
        calls.append(digest)
        return {"digest": digest, "object_info": infos[digest]} if digest in infos else None

    catalog = NodeCatalog(keep=2)
    assert await catalog.fleet(fetch) == []
    catalog.observe({
        "a": {"node_info_digest": "d2"}, "b": {"node_info_digest": "d1"},
        "c": {"node_info_digest": "d1"}, "d": {"node_info_digest": "d3", "draining": True},
        "e": {"node_info_digest": None},
    })
    assert await catalog.fleet(fetch) == [infos["d1"], infos["d2"]]  # most widely held first
    assert await catalog.fleet(fetch) == [infos["d1"], infos["d2"]]
    assert calls == ["d1", "d2"]
    catalog.observe({"x": {"node_info_digest": "gone"}})
    assert await catalog.fleet(fetch) == [] and calls[-1] == "gone"
