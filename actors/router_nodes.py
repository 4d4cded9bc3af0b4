"""What the router knows of each endpoint's node classes (raw graphs, docs/api.md §7.4) and
model files (models by name, §7.5).

Each endpoint reports the digest of its node info (its ComfyUI's /object_info, normalised by
`comfy_fleet.workflows.raw_graph`) in every status. On a digest the router has not seen for
that endpoint it asks once for the node info and keeps only its class names and the files its
loaders list (`comfy_fleet.workflows.model_files.held`) on the endpoint's
`routing.EndpointLoad` (`classes`, `model_files`), which `can_take` matches against a task's
`node:<class>` and `file:<folder>/<name>` labels. The node info lists the model files, so a file
added to or removed from the host changes the digest once the endpoint re-reads it. The ingress reads the digests from the router's stats and asks for the node info of a
digest it does not hold yet (`catalog`), so a check costs no call in the steady state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from actors import ports
from comfy_fleet.policies import routing
from comfy_fleet.workflows import model_files

log = logging.getLogger("comfy_fleet.router")

#: How long one endpoint may take to hand over its node info.
CATALOG_TIMEOUT_S = 10.0


class NodeInfo:
    def __init__(
        self,
        handle_of: Callable[[str], ports.EndpointApi | None],
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
        wake: Callable[[], None],
    ) -> None:
        self._handle_of = handle_of
        self._spawn = spawn
        self._wake = wake

    def observe(self, name: str, load: routing.EndpointLoad, digest: Any) -> None:
        """An endpoint's status carried `digest`: on a new one, learn its classes and model
        files (one call per change, not per heartbeat); raw graphs and tasks naming model files
        wait for the endpoint until then."""
        if digest == load.node_info_digest:
            return
        load.node_info_digest, load.classes, load.model_files = digest, None, None
        if digest is not None:
            self._spawn(self._learn(name, load, str(digest)))

    async def _learn(self, name: str, load: routing.EndpointLoad, digest: str) -> None:
        catalog = await self.catalog(digest, [name])
        if load.node_info_digest != digest:
            return  # changed meanwhile: that change learns its own
        if catalog is None:
            load.node_info_digest = None  # the next status tries again
            return
        load.classes = frozenset(catalog["object_info"])
        load.model_files = model_files.held(catalog["object_info"])
        self._wake()

    async def catalog(self, digest: str, names: Iterable[str]) -> dict[str, Any] | None:
        """`{"digest", "object_info"}` from the first of `names` that reports `digest`."""
        for name in names:
            handle = self._handle_of(name)
            if handle is None:
                continue
            try:
                found = await asyncio.wait_for(handle.node_catalog(), CATALOG_TIMEOUT_S)
            except Exception:
                log.debug("node info of %s not read", name, exc_info=True)
                continue
            if found is not None and found.get("digest") == digest:
                return found
        return None


def reporting(loads: Mapping[str, routing.EndpointLoad], digest: str) -> list[str]:
    """The endpoints whose last status carried `digest`."""
    return [name for name, load in loads.items() if load.node_info_digest == digest]
