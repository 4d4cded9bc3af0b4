"""Raw graphs against the real service (docs/api.md §7.4): a graph runs and its output is stored,
one with an image in `files` runs, and an unknown class, a broken link and a class outside
RAW_GRAPH_ALLOW_NODES are each refused with the node named and nothing recorded."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

SOLID = {
    "1": {"class_type": "EmptyImage",
          "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0x00FF00}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "raw"}},
}


async def post(fleet: Fleet, body: dict[str, Any]) -> httpx.Response:
    return await fleet.http.post("/tasks", json=body)


async def ready(fleet: Fleet) -> None:
    """The ingress learns the endpoints' node info from the router within a second or two."""
    for _ in range(100):
        r = await post(fleet, {"graph": {"1": {"class_type": "EmptyImage", "inputs": {}}}})
        if r.status_code != 503:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no endpoint reported its node classes")


async def stored_pixels(task: dict[str, Any]) -> np.ndarray:
    [out] = task["outputs"]
    async with httpx.AsyncClient() as plain:
        blob = (await plain.get(out["url"])).content
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


async def test_a_raw_graph_runs_and_its_output_is_stored(fleet: Fleet) -> None:
    await ready(fleet)
    r = await post(fleet, {"graph": SOLID, "client_task_id": "raw-graph-1"})
    assert r.status_code == 202, r.text
    assert r.json()["workflow"] == "graph"
    final = await fleet.wait_final(r.json()["task_id"])
    assert final["status"] == "succeeded", final
    pixels = await stored_pixels(final)
    assert pixels.shape == (16, 24, 3) and pixels[0, 0].tolist() == [255, 0, 255]
    assert f"/{final['task_id']}/" in final["outputs"][0]["s3_key"]
    again = await post(fleet, {"graph": SOLID, "client_task_id": "raw-graph-1"})
    assert again.status_code == 200 and again.json()["task_id"] == final["task_id"]


async def test_a_raw_graph_with_an_image_file_runs(fleet: Fleet) -> None:
    await ready(fleet)
    img = Image.new("RGB", (5, 3), (10, 20, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "p"}},
    }
    r = await post(fleet, {"graph": graph,
                           "files": {"photo.png": base64.b64encode(buf.getvalue()).decode()}})
    assert r.status_code == 202, r.text
    final = await fleet.wait_final(r.json()["task_id"])
    assert final["status"] == "succeeded", final
    pixels = await stored_pixels(final)
    assert pixels.shape == (3, 5, 3) and pixels[1, 1].tolist() == [245, 235, 225]


@pytest.mark.parametrize(
    ("graph", "node_id", "problem"),
    [
        ({**SOLID, "4": {"class_type": "NopeNode", "inputs": {}}}, "4", "class_unknown"),
        ({**SOLID, "3": {"class_type": "SaveImage",
                         "inputs": {"images": ["9", 0], "filename_prefix": "x"}}},
         "3", "broken_link"),
        ({**SOLID, "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 3]}}},
         "2", "broken_link"),
        ({**SOLID, "4": {"class_type": "ImageToMask",
                         "inputs": {"image": ["1", 0], "channel": "red"}}},
         "4", "class_refused"),
    ],
)
async def test_bad_graphs_are_refused_naming_the_node(
    fleet: Fleet, graph: dict[str, Any], node_id: str, problem: str
) -> None:
    await ready(fleet)
    before = await fleet.task_count()
    r = await post(fleet, {"graph": graph, "client_task_id": f"bad-graph-{node_id}-{problem}"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "graph_invalid"
    assert error["details"]["node_id"] == node_id and error["details"]["problem"] == problem
    assert await fleet.task_count() == before
    missing = await fleet.http.get(
        "/tasks", params={"client_task_id": f"bad-graph-{node_id}-{problem}"})
    assert missing.json()["tasks"] == []


async def test_workflow_and_graph_together_are_refused(fleet: Fleet) -> None:
    r = await post(fleet, {"workflow": "solid", "graph": SOLID})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
