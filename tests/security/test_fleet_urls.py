"""Callbacks and image URLs never reach the fleet's own ComfyUIs, at any address form.

A webhook POSTed to a ComfyUI's /interrupt stops whatever runs there and answers 200, so it
would count as delivered, again on each redelivery. Against the running service (real Ray,
PostgreSQL, HTTP): for a configured endpoint and for one added at run time with POST /endpoints,
every way of writing its host (other loopback addresses, IPv6 loopback, IPv4-mapped,
IPv4-compatible, 6to4, NAT64, this machine's own address) is refused with 422 `url_forbidden` as
an image URL and as a callback_url; a callback accepted before its endpoint joined the fleet is
never delivered to it; and POST /endpoints refuses what is not a ComfyUI or may not be one.
(Discovered endpoints reach the same rule through the router's endpoint list:
tests/unit/test_fleet_refresher.py.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from comfy_standin.testing import StandInProcess
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

LOOPBACK_FORMS = [
    "127.0.0.2", "[::1]", "[::ffff:127.0.0.2]", "[::127.0.0.1]", "[2002:7f00:1::]",
    "[64:ff9b::7f00:1]",
]

ONLY_HERE_GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "fleet-urls.safetensors"}},
    "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fleet-urls"}},
}


def address_forms() -> list[str]:
    """The loopback forms, and this machine's own non-loopback addresses."""
    own = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%", 1)[0])
            if not (ip.is_loopback or ip.is_link_local):
                own.append(f"[{ip}]" if ip.version == 6 else str(ip))
    assert own, "this machine has no address besides loopback"
    return LOOPBACK_FORMS + own


async def interrupts(url: str) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        return int((await http.get(f"{url}/_standin/counters")).json()["interrupts"])


async def assert_refused_everywhere(fleet: Fleet, port: int) -> None:
    """Every address form of `port`: refused as an image URL and as a callback, recording nothing."""
    refused = []
    for form in address_forms():
        image = await fleet.http.post(
            "/tasks", json={"workflow": "invert", "params": {"image": f"http://{form}:{port}/view?filename=a.png"}}
        )
        callback = await fleet.http.post(
            "/tasks",
            json={"workflow": "solid", "params": {}, "callback_url": f"http://{form}:{port}/interrupt"},
        )
        for kind, r in (("image", image), ("callback", callback)):
            code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
            refused.append((kind, form, r.status_code, code))
    wrong = [r for r in refused if r[2:] != (422, "url_forbidden")]
    assert not wrong, f"not refused with 422 url_forbidden: {wrong}"


async def test_a_configured_endpoint_is_unreachable_at_every_address_form(fleet: Fleet) -> None:
    standin = fleet.standins[0]
    before = await interrupts(standin.url)
    await assert_refused_everywhere(fleet, standin.port)
    assert await interrupts(standin.url) == before


async def test_an_endpoint_added_at_run_time_is_unreachable_and_never_gets_a_webhook(
    fleet: Fleet, tmp_path: Path
) -> None:
    for d in ("in", "out", "tmp"):
        (tmp_path / d).mkdir()
    extra = StandInProcess(
        input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp",
        models={"checkpoints": ["fleet-urls.safetensors"]},
    ).start()
    try:
        wf_dir = fleet.settings.workflows_dir
        (wf_dir / "fleet_urls_only.json").write_text(json.dumps(ONLY_HERE_GRAPH))
        (wf_dir / "fleet_urls_only.toml").write_text('description = "Runs only on the added stand-in"\n')
        assert "fleet_urls_only" in (await fleet.http.post("/workflows/reload")).json()["added"]

        # Accepted now (that stand-in is nobody yet); it waits until the stand-in joins, runs
        # there, and its webhook would then POST to that very ComfyUI's /interrupt.
        r = await fleet.http.post(
            "/tasks",
            json={"workflow": "fleet_urls_only", "params": {},
                  "callback_url": f"http://127.0.0.1:{extra.port}/interrupt"},
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]

        r = await fleet.http.post("/endpoints", json={"endpoint": extra.host_port})
        assert r.status_code == 201, r.text
        final = await fleet.wait_final(task_id)
        assert final["status"] == "succeeded" and final["endpoint"] == extra.host_port, final
        await assert_never_delivered(fleet, task_id, ends=1)
        r = await fleet.http.post(f"/tasks/{task_id}/webhook")  # redeliver
        assert r.status_code == 202, r.text
        await assert_never_delivered(fleet, task_id, ends=2)
        assert await interrupts(extra.url) == 0

        await assert_refused_everywhere(fleet, extra.port)
        assert await interrupts(extra.url) == 0
        await fleet.http.delete(f"/endpoints/{extra.host_port}")
    finally:
        extra.stop()


async def assert_never_delivered(fleet: Fleet, task_id: str, ends: int) -> None:
    """Wait for the `ends`-th end of the task's webhook (dead or delivered): every one dead,
    each try refused by the URL policy."""
    for _ in range(300):
        events: list[dict[str, Any]] = (await fleet.http.get(f"/tasks/{task_id}/events")).json()
        done = [e for e in events if e["type"] in ("webhook.dead", "webhook.delivered")]
        if len(done) >= ends:
            assert all(e["type"] == "webhook.dead" for e in done), done
            tries = [e["data"] for e in events if e["type"] == "webhook.attempted"]
            assert tries and all("url_forbidden" in (t.get("error") or "") for t in tries), tries
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the webhook of {task_id} did not end {ends} time(s)")


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:5432", "169.254.169.254:80", "[::ffff:169.254.169.254]:80", "0.0.0.0:8188"]
)
async def test_post_endpoints_refuses_what_is_not_a_comfyui(fleet: Fleet, endpoint: str) -> None:
    r = await fleet.http.post("/endpoints", json={"endpoint": endpoint})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("url_forbidden", "endpoint_not_comfyui"), r.text
    listed = {e["endpoint"] for e in (await fleet.http.get("/endpoints")).json()}
    assert endpoint not in listed


async def test_post_endpoints_refuses_the_service_itself(fleet: Fleet) -> None:
    r = await fleet.http.post("/endpoints", json={"endpoint": f"127.0.0.1:{fleet.settings.service_port}"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "url_forbidden", r.text
