"""The calls of actors/remote.py that wait for Ray's GCS run in a thread when an event loop makes
them (the router's, an ingress replica's): the loop goes on serving meanwhile. Ray's functions are
replaced by recorders of where they run; what Ray does with the calls is the e2e tests' (an
endpoint added and removed at run time, tests/e2e/test_endpoints_runtime.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors import ports, remote


def on_loop() -> bool:
    """Whether the caller runs on an event loop's thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Handle:
    """An actor handle whose `status` answers at once."""

    class _Method:
        def remote(self) -> Any:
            async def answer() -> dict[str, Any]:
                return {"connected": True}

            return answer()

    status = _Method()


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Each GCS call made, with whether it ran on the event loop's thread."""
    calls: list[tuple[str, bool]] = []

    def get_actor(name: str, namespace: str) -> Handle:
        calls.append(("get_actor", on_loop()))
        return Handle()

    def kill(actor: Any, no_restart: bool) -> None:
        calls.append(("kill", on_loop()))

    monkeypatch.setattr(remote.ray, "get_actor", get_actor)
    monkeypatch.setattr(remote.ray, "kill", kill)
    return calls


async def test_a_port_looks_its_actor_up_off_the_loop_once(gcs: list[tuple[str, bool]]) -> None:
    endpoint = remote.port("endpoint:h:1", ports.EndpointApi)
    assert await endpoint.status() == {"connected": True}
    assert await endpoint.status() == {"connected": True}
    assert gcs == [("get_actor", False)]


async def test_an_endpoint_actor_is_stopped_off_the_loop(gcs: list[tuple[str, bool]]) -> None:
    await remote.stop_endpoint_actor("h:1")
    assert gcs == [("get_actor", False), ("kill", False)]
