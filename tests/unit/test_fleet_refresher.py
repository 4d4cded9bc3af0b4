"""The refresher keeps the fleet rule in step with the router's endpoint list (configured,
discovered and added ones, as GET /endpoints shows them). No I/O: source, resolver and this
machine's addresses are injected."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from comfy_fleet import errors
from comfy_fleet.net import fleet_refresher
from comfy_fleet.policies import fleet_addresses
from comfy_fleet.policies.url_policy import UrlPolicy


class FakeRouter:
    """What the router's stats() answers: its endpoints keyed by name."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Any] = {"127.0.0.1:8188": {}}
        self.fail = False

    async def stats(self) -> dict[str, Any]:
        if self.fail:
            raise ConnectionError("router restarting")
        return {"waiting": 0, "endpoints": dict(self.endpoints)}


def setup() -> tuple[FakeRouter, fleet_refresher.FleetRefresher, UrlPolicy]:
    router = FakeRouter()
    fleet = fleet_addresses.FleetAddresses(static=["127.0.0.1:8188"])

    async def source() -> list[str]:
        return fleet_refresher.endpoint_names(await router.stats())

    async def resolver(host: str, _port: int) -> list[str]:
        return {"gpu-7.cluster": ["10.0.7.1"]}[host]

    refresher = fleet_refresher.FleetRefresher(
        fleet, source, period_s=0.01, resolver=resolver, own=lambda: ["127.0.0.1", "10.0.0.2"]
    )
    return router, refresher, dataclasses.replace(UrlPolicy.build(), fleet=fleet)


async def test_a_discovered_endpoint_joins_the_rule_at_the_next_refresh() -> None:
    router, refresher, policy = setup()
    await refresher.refresh()
    policy.check_url("http://[::ffff:127.0.0.2]:8190/")
    policy.check_url("http://10.0.7.1:8190/")
    # discovery found a node (named by address) and one named by a host name; one added by POST
    router.endpoints.update({"10.0.5.5:8190": {}, "gpu-7.cluster:8190": {}, "[fd00::9]:8191": {}})
    await refresher.refresh()
    for url in ("http://10.0.5.5:8190/", "http://[::ffff:127.0.0.2]:8190/", "http://[::1]:8191/",
                "http://10.0.0.2:8190/", "http://[2002:a00:505::]:8190/", "http://10.0.7.1:8190/",
                "http://[fd00::9]:8191/interrupt", "http://gpu-7.cluster:8190/"):
        with pytest.raises(errors.UrlForbidden):
            policy.check_url(url)


async def test_a_removed_endpoint_leaves_and_a_failing_router_lifts_nothing() -> None:
    router, refresher, policy = setup()
    router.endpoints["10.0.5.5:8190"] = {}
    await refresher.refresh()
    router.fail = True
    await refresher.refresh()
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://10.0.5.5:8190/")
    router.fail = False
    del router.endpoints["10.0.5.5:8190"]
    router.endpoints.pop("127.0.0.1:8188")  # configured: stays whatever the router says
    await refresher.refresh()
    policy.check_url("http://10.0.5.5:8190/")
    with pytest.raises(errors.UrlForbidden):
        policy.check_url("http://127.0.0.3:8188/")


async def test_the_background_loop_follows_the_router() -> None:
    router, refresher, policy = setup()
    refresher.start()
    try:
        router.endpoints["10.0.5.6:9000"] = {}
        for _ in range(500):
            if ("10.0.5.6", 9000) in refresher.fleet.current.endpoints:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(errors.UrlForbidden):
            policy.check_url("http://[::ffff:10.0.5.6]:9000/")
    finally:
        await refresher.stop()


def test_names_that_are_not_host_port_are_skipped() -> None:
    assert fleet_refresher._valid(["gpu label", "a:1", "::1", "[::1]:2"]) == ["a:1", "[::1]:2"]
