"""The prompt worker: ComfyUI's ``PromptExecutor`` as seen from the wire.

One task takes prompts from the queue in heap order and runs them node by node in the real
server's order (ExecutionList + ``ux_friendly_pick_node``), with its classic cache (outputs of
the last prompt's nodes, keyed by input signature), its frames (execution_start,
execution_cached, progress_state, executing, executed, progress, execution_success /
execution_error / execution_interrupted) and their routing, and its history entries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from typing import Any

import numpy as np

from .files import Dirs
from .hub import Hub
from .images import TorchRuntimeError, tensor_repr
from .knobs import Counters, Knobs
from .nodes import NodeContext, is_changed, run_node
from .prompt_queue import PromptQueue

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The interrupt flag was seen (at a node start or in a progress callback)."""


class InjectedFailure(Exception):
    """A failure asked for by the ``fail`` knob; reported with the rule's type and message."""


def _is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _exc_type(ex: BaseException) -> str:
    if isinstance(ex, TorchRuntimeError):
        return "RuntimeError"
    mod = type(ex).__module__
    name = type(ex).__qualname__
    if mod in ("builtins", None):
        return name
    if mod.startswith("PIL."):
        mod = "PIL"
    return f"{mod}.{name}"


def _format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    if isinstance(x, np.ndarray):
        return tensor_repr(x)
    return str(x)


class ProgressRegistry:
    """``progress_state`` bookkeeping for one prompt: started/finished nodes only."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}

    def _entry(self, node_id: str) -> dict[str, Any]:
        e = self.nodes.get(node_id)
        if e is None:
            e = {
                "value": 0,
                "max": 1,
                "state": "pending",
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            self.nodes[node_id] = e
        return e

    def start(self, node_id: str) -> None:
        e = self._entry(node_id)
        e["state"], e["value"], e["max"] = "running", 0.0, 1.0

    def update(self, node_id: str, value: int, maximum: int) -> None:
        e = self._entry(node_id)
        e["state"], e["value"], e["max"] = "running", value, maximum

    def finish(self, node_id: str) -> None:
        e = self._entry(node_id)
        e["state"], e["value"] = "finished", e["max"]

    def payload(self) -> dict[str, Any]:
        active = {k: dict(v) for k, v in self.nodes.items() if v["state"] != "pending"}
        return {"prompt_id": self.prompt_id, "nodes": active}


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
        _number, prompt_id, prompt, extra_data, outputs_to_execute = item[:5]
        self.interrupt_flag = False
        self.running_prompt_id = prompt_id
        self.client_id = extra_data.get("client_id")
        messages: list[list[Any]] = []

        def add_message(event: str, data: dict[str, Any], broadcast: bool) -> None:
            data = {**data, "timestamp": _now_ms()}
            messages.append([event, data])
            if self.client_id is not None or broadcast:
                self.hub.send(event, data, self.client_id)

        add_message("execution_start", {"prompt_id": prompt_id}, False)
        # Hidden PROMPT as nodes see it: the real server writes is_changed into it.
        png_prompt = {k: dict(v) for k, v in prompt.items()}
        changed: dict[str, Any] = {}
        for nid, node in prompt.items():
            val = is_changed(node["class_type"], node.get("inputs", {}), self.dirs)
            if val is not None:
                changed[nid] = val
                png_prompt[nid]["is_changed"] = [val]
        sigs = self._signatures(prompt, changed)
        wanted = set(sigs.values())
        self.cache = {k: v for k, v in self.cache.items() if k in wanted}
        cached_nodes = [nid for nid in prompt if sigs[nid] in self.cache]
        add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, False)

        progress = ProgressRegistry(prompt_id)
        results: dict[str, tuple[Any, ...]] = {}
        ui_outputs: dict[str, Any] = {}
        meta_outputs: dict[str, Any] = {}
        executed: list[str] = []
        current_outputs = list(prompt.keys())
        sid = self.client_id
        success = True

        def send_progress_state() -> None:
            self.hub.send("progress_state", progress.payload(), sid)

        order = _ExecutionList(prompt, self.catalogue, lambda n: sigs[n] in self.cache)
        for out_id in outputs_to_execute:
            order.add_node(out_id)

        while not order.is_empty():
            node_id = order.stage()
            if node_id is None:
                # What ComfyUI reports for a graph cycle found at run time.
                blamed = next(iter(order.pending))
                add_message(
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": blamed,
                        "node_type": prompt[blamed]["class_type"],
                        "executed": list(executed),
                        "exception_message": "Dependency cycle detected",
                        "exception_type": "graph.DependencyCycleError",
                        "traceback": [],
                        "current_inputs": [],
                        "current_outputs": current_outputs,
                    },
                    False,
                )
                success = False
                break
            node = prompt[node_id]
            class_type = node["class_type"]
            hit = self.cache.get(sigs[node_id])
            if hit is not None:
                if sid is not None:
                    ui = hit[1]
                    self.hub.send(
                        "executed",
                        {
                            "node": node_id,
                            "display_node": node_id,
                            "output": ui or None,
                            "prompt_id": prompt_id,
                        },
                        sid,
                    )
                if hit[1]:
                    ui_outputs[node_id] = hit[1]
                    meta_outputs[node_id] = _meta(node_id)
                progress.finish(node_id)
                send_progress_state()
                results[node_id] = hit[0]
                executed.append(node_id)
                order.complete(node_id)
                continue

            progress.start(node_id)
            send_progress_state()
            if sid is not None:
                self.last_node_id = node_id
                self.hub.send(
                    "executing",
                    {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                    sid,
                )
            inputs: dict[str, Any] = {}
            try:
                if self.interrupt_flag:
                    raise Interrupted()
                while self.knobs.hang:  # noqa: ASYNC110 - a plain attribute knob
                    await asyncio.sleep(0.02)
                inputs = self._resolve(node, results, sigs)
                rule = self.knobs.take_failure(node_id, class_type)
                if rule is not None:
                    raise InjectedFailure(rule.exception_type, rule.exception_message)

                async def on_progress(
                    value: int, maximum: int, preview: bytes | None, _nid: str = node_id
                ) -> None:
                    if self.interrupt_flag:
                        raise Interrupted()
                    progress.update(_nid, value, maximum)
                    send_progress_state()
                    if preview is not None and sid is not None and self._flagged(sid):
                        self.hub.send_image(preview, _preview_meta(_nid, prompt_id), sid)
                    self.hub.send(
                        "progress",
                        {"value": value, "max": maximum, "prompt_id": prompt_id, "node": _nid},
                        sid,
                    )
                    if preview is not None and (sid is None or not self._flagged(sid)):
                        self.hub.send_image(preview, _preview_meta(_nid, prompt_id), sid)
                    await asyncio.sleep(0)

                ctx = NodeContext(
                    node_id=node_id,
                    class_type=class_type,
                    prompt_id=prompt_id,
                    info=self.catalogue.node(class_type) or {},
                    dirs=self.dirs,
                    knobs=self.knobs,
                    counters=self.counters,
                    png_prompt=png_prompt,
                    extra_pnginfo=extra_data.get("extra_pnginfo"),
                    progress=on_progress,
                )
                outs, ui = await run_node(ctx, inputs)
            except Interrupted:
                add_message(
                    "execution_interrupted",
                    {
                        "prompt_id": prompt_id,
                        "node_id": node_id,
                        "node_type": class_type,
                        "executed": list(executed),
                    },
                    True,
                )
                success = False
                break
            except Exception as ex:
                if isinstance(ex, InjectedFailure):
                    exc_type, message = ex.args[0], ex.args[1]
                    tb = [
                        '  File "comfy_standin/executor.py", in execute\n    (injected failure)\n'
                    ]
                else:
                    exc_type, message = _exc_type(ex), str(ex)
                    tb = traceback.format_tb(ex.__traceback__)
                add_message(
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": node_id,
                        "node_type": class_type,
                        "executed": list(executed),
                        "exception_message": f"{message}\n",
                        "exception_type": exc_type,
                        "traceback": tb,
                        "current_inputs": {k: [_format_value(v)] for k, v in inputs.items()},
                        "current_outputs": current_outputs,
                    },
                    False,
                )
                success = False
                break
            results[node_id] = outs
            self.cache[sigs[node_id]] = (outs, ui)
            if ui:
                ui_outputs[node_id] = ui
                meta_outputs[node_id] = _meta(node_id)
                if sid is not None:
                    self.hub.send(
                        "executed",
                        {
                            "node": node_id,
                            "display_node": node_id,
                            "output": ui,
                            "prompt_id": prompt_id,
                        },
                        sid,
                    )
            progress.finish(node_id)
            send_progress_state()
            executed.append(node_id)
            order.complete(node_id)
        else:
            add_message("execution_success", {"prompt_id": prompt_id}, False)

        self.last_node_id = None
        self.running_prompt_id = None
        status = {
            "status_str": "success" if success else "error",
            "completed": success,
            "messages": messages,
        }
        return ui_outputs, meta_outputs, status

    def _flagged(self, sid: str) -> bool:
        return self.hub.flags.get(sid, {}).get("supports_preview_metadata") is True

    # -- helpers ---------------------------------------------------------------------------------
    def _resolve(
        self, node: dict[str, Any], results: dict[str, tuple[Any, ...]], sigs: dict[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in node.get("inputs", {}).items():
            if _is_link(value):
                src = results.get(value[0])
                if src is None and value[0] in sigs:
                    # A cached source is never staged: its outputs come from the cache.
                    hit = self.cache.get(sigs[value[0]])
                    src = hit[0] if hit is not None else None
                if src is None or value[1] >= len(src):
                    continue  # an optional input from a branch that did not run
                out[name] = src[value[1]]
            elif isinstance(value, dict) and "__value__" in value:
                out[name] = value["__value__"]
            else:
                out[name] = value
        return out

    def _signatures(self, prompt: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
        """Input signature per node: class, is_changed and inputs, links by their source's
        signature, as the classic cache keys them."""
        memo: dict[str, Any] = {}

        def sig(nid: str, depth: int = 0) -> Any:
            if nid in memo:
                return memo[nid]
            if depth > 500 or nid not in prompt:
                return ("missing", nid)
            node = prompt[nid]
            parts = []
            for name in sorted(node.get("inputs", {})):
                v = node["inputs"][name]
                if _is_link(v):
                    parts.append((name, "link", sig(v[0], depth + 1), v[1]))
                elif isinstance(v, (int, float, str, bool)) or v is None:
                    parts.append((name, type(v).__name__, v))
                else:
                    parts.append((name, "json", json.dumps(v, sort_keys=True)))
            info = self.catalogue.node(node["class_type"]) or {}
            key: tuple[Any, ...] = (node["class_type"], repr(changed.get(nid)), tuple(parts))
            if info.get("not_idempotent"):
                key = (*key, nid)
            memo[nid] = key
            return key

        return {nid: sig(nid) for nid in prompt}


def _meta(node_id: str) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "display_node": node_id,
        "parent_node": None,
        "real_node_id": node_id,
    }


def _preview_meta(node_id: str, prompt_id: str) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "prompt_id": prompt_id,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
        "image_type": "image/png",
    }


class _ExecutionList:
    """ComfyUI's ExecutionList/TopologicalSort, without lazy inputs or subgraphs."""

    def __init__(self, prompt: dict[str, Any], catalogue: Any, is_cached: Any) -> None:
        self.prompt = prompt
        self.catalogue = catalogue
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}

    def _add_strong_link(self, from_id: str, from_socket: int, to_id: str) -> None:
        if not self.is_cached(from_id):
            self.add_node(from_id)
            if to_id not in self.blocking[from_id]:
                self.blocking[from_id][to_id] = {}
                self.block_count[to_id] += 1
            self.blocking[from_id][to_id][from_socket] = True

    def add_node(self, unique_id: str) -> None:
        node_ids = [unique_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            nid = node_ids.pop()
            if nid in self.pending:
                continue
            self.pending[nid] = True
            self.block_count[nid] = 0
            self.blocking[nid] = {}
            for value in self.prompt[nid].get("inputs", {}).values():
                if _is_link(value) and value[0] in self.prompt:
                    if not self.is_cached(value[0]):
                        node_ids.append(value[0])
                    links.append((value[0], value[1], nid))
        for link in links:
            self._add_strong_link(*link)

    def is_empty(self) -> bool:
        return not self.pending

    def _is_output(self, nid: str) -> bool:
        info = self.catalogue.node(self.prompt[nid]["class_type"]) or {}
        return bool(info.get("output_node"))

    def stage(self) -> str | None:
        """The next node to run; None when every pending node waits on another (a cycle)."""
        available = [n for n in self.pending if self.block_count[n] == 0]
        if not available:
            return None
        for n in available:
            if self._is_output(n):
                return n
        for n in available:
            if any(self._is_output(b) for b in self.blocking[n]):
                return n
        for n in available:
            for b in self.blocking[n]:
                if any(self._is_output(b1) for b1 in self.blocking[b]):
                    return n
        return available[0]

    def complete(self, nid: str) -> None:
        del self.pending[nid]
        for blocked in self.blocking[nid]:
            self.block_count[blocked] -= 1
        del self.blocking[nid]
