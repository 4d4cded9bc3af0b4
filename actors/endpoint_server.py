"""ServerInfo: what one endpoint knows of its ComfyUI's nodes and model files, kept fresh.

Its ``/object_info`` is read after every (re)connect, after a model pull changed the host's files,
and every NODE_INFO_REFRESH_S while connected: ComfyUI re-reads a model folder that changed, so a
file copied onto the host shows in its loaders' lists at the next read. From one read come the
node info the fleet checks raw graphs against and routes on (``raw_graph.normalised``, with its
digest: a new digest makes the router learn the classes and model files again), the workflows the
endpoint can run, and the files each model folder holds (``model_files.held``; GET /endpoints
shows their counts). A read whose digest is the last one's changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfy_fleet import errors
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet.workflows import model_files, raw_graph
from comfy_fleet.workflows.registry import WorkflowRegistry

log = logging.getLogger("comfy_fleet.endpoint")


def _normalised(info: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`/object_info` as the fleet keeps it (`raw_graph.normalised`), and its digest."""
    node_info = raw_graph.normalised(info)
    return node_info, raw_graph.digest(node_info)


class ServerInfo:
    def __init__(
        self, name: str, client: ComfyClient, workflows_dir: Path, report: Callable[[], None]
    ) -> None:
        self.name = name
        self.client = client
        self.workflows_dir = workflows_dir
        #: tells the router at once (what we can run, our digest, changed)
        self.report = report
        #: the last /object_info read (its upload combos list the input folder as it was then)
        self.object_info: dict[str, Any] | None = None
        #: the node classes and input types we report (`raw_graph.normalised`) and their digest
        self.node_info: dict[str, Any] | None = None
        self.digest: str | None = None
        #: workflows this endpoint can run (its node classes and model files), None until known
        self.runnable: list[str] | None = None
        self.registry: WorkflowRegistry | None = None
        #: folder → the files its loaders list, and how many (None until known)
        self.model_files: dict[str, frozenset[str]] | None = None
        self.file_counts: dict[str, int] | None = None
        # One read at a time: a connect, a pull and the timer may ask together.
        self._lock = asyncio.Lock()

    async def learn(self) -> bool:
        """Read /object_info; True when the node info changed (then the router is told).
        Raises EndpointUnavailable when ComfyUI does not answer."""
        async with self._lock:
            info = await self.client.object_info()
            self.object_info = info
            # A real ComfyUI's node info runs to megabytes: normalising and hashing it every
            # NODE_INFO_REFRESH_S would stall the socket's frames; in a thread, the loop goes on.
            node_info, digest = await asyncio.to_thread(_normalised, info)
            if digest == self.digest:
                return False
            self.node_info, self.digest = node_info, digest
            self.model_files = model_files.held(node_info)
            self.file_counts = model_files.counts(self.model_files)
            await self.learn_workflows()
        self.report()
        return True

    async def refresh(self) -> None:
        """`learn` in the background: a ComfyUI that does not answer is left for the next read,
        and nothing it answers ends the refresh loop."""
        try:
            await self.learn()
        except errors.EndpointUnavailable:
            log.debug("endpoint %s: /object_info not read", self.name, exc_info=True)
        except Exception:
            log.warning("endpoint %s: /object_info not understood", self.name, exc_info=True)

    async def refresh_loop(self, interval_s: float, connected: Callable[[], bool]) -> None:
        """Every `interval_s` while connected (none when it is 0): a file copied onto the host,
        or one removed, is found without a reconnect."""
        if interval_s <= 0:
            return
        while True:
            await asyncio.sleep(interval_s)
            if connected():
                await self.refresh()

    async def learn_workflows(self) -> None:
        if self.object_info is None:
            return
        if self.registry is None:  # a folder of files to read and parse: off the event loop
            self.registry, _problems = await asyncio.to_thread(
                WorkflowRegistry.load, self.workflows_dir
            )
        self.runnable = sorted(
            w.name for w in self.registry.workflows() if w.can_run(self.object_info)[0]
        )

    async def reload_workflows(self) -> list[str] | None:
        """Re-read the workflows (after POST /workflows/reload) and what we can run of them."""
        self.registry = None
        await self.learn_workflows()
        return self.runnable

    def catalog(self) -> dict[str, Any] | None:
        """`{"digest", "object_info"}` (the normalised /object_info), or None before ComfyUI
        first answered."""
        if self.node_info is None:
            return None
        return {"digest": self.digest, "object_info": self.node_info}

    def status(self) -> dict[str, Any]:
        """Its part of the endpoint's status (the router's routing, GET /endpoints)."""
        return {
            "workflows": self.runnable,
            "node_info_digest": self.digest,
            "model_files": self.file_counts,
        }
