"""The prompt worker: ComfyUI's ``PromptExecutor`` as seen from the wire.

One task takes prompts from the queue in heap order and runs each (``prompt_run.PromptRun``:
node by node in the real server's order, with its frames and their routing) into its history
entry. The executor keeps what outlives a prompt: the classic cache (outputs of the last
prompt's nodes, keyed by input signature), the interrupt flag, and which socket and node the
running prompt has.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import prompt_run
from .files import Dirs
from .hub import Hub
from .knobs import Counters, Knobs
from .prompt_queue import PromptQueue

log = logging.getLogger(__name__)


class Executor:
    """Runs queued prompts one at a time; owns the node cache and the interrupt flag."""

    def __init__(
        self,
        queue: PromptQueue,
        hub: Hub,
        dirs: Dirs,
        catalogue: Any,
        knobs: Knobs,
        counters: Counters,
    ) -> None:
        self.queue = queue
        self.hub = hub
        self.dirs = dirs
        self.catalogue = catalogue
        self.knobs = knobs
        self.counters = counters
        #: signature -> (outputs, ui); the classic cache of the last prompt's nodes
        self.cache: dict[Any, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self.interrupt_flag = False
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.running_prompt_id: str | None = None
        self.free_memory_requested = False
        self._task: asyncio.Task[None] | None = None
        self._stall = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # pragma: no cover - logged by _loop
                pass

    def interrupt(self) -> None:
        self.interrupt_flag = True

    # -- the worker loop ------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self.queue.wait_pending()
            # Let POSTs that arrived together be queued before the first is taken, as the
            # real worker thread's wake-up latency does.
            await asyncio.sleep(0)
            # Knobs are plain attributes changed from anywhere; an assignment wakes us (a
            # poll every 20 ms cost a stalled stand-in 50 wake-ups a second).
            while self.knobs.stall_worker or self.knobs.hang:
                await self.knobs.changed()
            got = self.queue.get()
            if got is None:
                continue
            item, task_id = got
            try:
                outputs, meta, status = await self.execute(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one prompt kill the worker
                log.exception("stand-in executor crashed on %s", item[1])
                outputs, meta = {}, {}
                status = {"status_str": "error", "completed": False, "messages": []}
            self.counters.prompts_run += 1
            self.queue.task_done(task_id, outputs, meta, status)
            if self.client_id is not None:
                self.hub.send("executing", {"node": None, "prompt_id": item[1]}, self.client_id)
            if self.free_memory_requested:
                self.cache.clear()
                self.free_memory_requested = False
            # Let HTTP handlers and the frame pump run between back-to-back prompts.
            await asyncio.sleep(0)

    # -- one prompt ------------------------------------------------------------------------------
    async def execute(
        self, item: list[Any]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Run one queued prompt (``[number, prompt_id, prompt, extra_data, outputs]``): its
        history entry's outputs, meta and status."""
        _number, prompt_id, prompt, extra_data, outputs_to_execute = item[:5]
        self.interrupt_flag = False
        self.running_prompt_id = prompt_id
        self.client_id = extra_data.get("client_id")
        run = prompt_run.PromptRun(self, prompt_id, prompt, extra_data)
        success = await run.run(outputs_to_execute)
        self.last_node_id = None
        self.running_prompt_id = None
        status = {
            "status_str": "success" if success else "error",
            "completed": success,
            "messages": run.messages,
        }
        return run.ui_outputs, run.meta_outputs, status
