"""actors/autoscaler.py without Ray: the loop reads the router's stats, publishes a request
only when it changes, drains what the policy lets go and hides it from discovery."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.autoscaler import Autoscaler
from comfy_fleet import errors
from comfy_fleet.config import Settings


class FakeRouter:
    def __init__(self) -> None:
        self.waiting = 0
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.removed: list[str] = []

    async def stats(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "dispatched_total": 0, "endpoints": self.endpoints}

    async def remove_endpoint(self, name: str, *, record: bool = True) -> dict[str, Any]:
        assert record is False  # a retired endpoint is not a recorded fleet change
        self.removed.append(name)
        self.endpoints[name]["draining"] = True
        return {"endpoint": name, "state": "draining"}


def ep(inflight: int = 0, connected: bool = True) -> dict[str, Any]:
    return {"connected": connected, "queue_remaining": 0, "foreign_queue": 0, "inflight": inflight,
            "draining": False}


def settings(**env: str) -> Settings:
    return Settings.from_env(
        {"COMFYUI_DISCOVERY": "true", "AUTOSCALE": "true", "AUTOSCALE_WINDOW_S": "2",
         "AUTOSCALE_MAX_HOSTS": "3", **env}
    )


def test_backlog_requests_hosts_once_then_withdraws_and_lets_idle_hosts_go() -> None:
    now = [0.0]
    requests: list[int] = []
    scaler = Autoscaler(settings(), request=requests.append, clock=lambda: now[0])
    router = FakeRouter()
    scaler.router = router
    router.endpoints = {"10.0.0.1:8188": ep(inflight=2)}
    assert scaler.visible({"10.0.0.1:8188": []}) == {"10.0.0.1:8188": []}
    router.waiting = 8

    async def ticks(times: list[float]) -> None:
        for t in times:
            now[0] = t
            await scaler.tick()

    asyncio.run(ticks([0.0, 1.0, 2.0, 3.0]))
    # 0 published first (nothing asked yet), then 3 hosts (bounded by AUTOSCALE_MAX_HOSTS), once
    assert requests == [0, 3]
    # the backlog ends: the request is withdrawn; after the quiet window the idle host goes
    router.waiting = 0
    router.endpoints["10.0.0.1:8188"] = ep()
    asyncio.run(ticks([4.0, 5.0, 6.0]))
    assert requests == [0, 3, 0]
    assert router.removed == ["10.0.0.1:8188"]
    assert scaler.visible({"10.0.0.1:8188": []}) == {}
    # tasks pile up again: it is offered to discovery at once
    router.waiting = 5
    del router.endpoints["10.0.0.1:8188"]
    asyncio.run(ticks([7.0]))
    assert scaler.visible({"10.0.0.1:8188": []}) == {"10.0.0.1:8188": []}


def test_autoscaling_needs_discovery_and_sane_bounds() -> None:
    with pytest.raises(errors.ConfigError, match="COMFYUI_DISCOVERY"):
        Settings.from_env({"AUTOSCALE": "true"})
    with pytest.raises(errors.ConfigError, match="AUTOSCALE_MAX_HOSTS"):
        settings(AUTOSCALE_MIN_HOSTS="4", AUTOSCALE_MAX_HOSTS="2")
    assert Settings.from_env({}).autoscale is False
