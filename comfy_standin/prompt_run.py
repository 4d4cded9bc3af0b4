"""One prompt's run, as ComfyUI's ``PromptExecutor.execute`` shows it on the wire.

``PromptRun`` takes one queued prompt through the executor's order (``execution_list``) and
cache: its frames (execution_start, execution_cached, progress_state, executing, executed,
progress, execution_success / execution_error / execution_interrupted) and their routing, the
messages its history entry keeps, and its outputs. The ``Executor`` owns what outlives a prompt
(the queue, the cache, the interrupt flag).
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from typing import TYPE_CHECKING, Any

import numpy as np

from .execution_list import ExecutionList, is_link
from .images import TorchRuntimeError, tensor_repr
from .nodes import NodeContext, is_changed, run_node

if TYPE_CHECKING:
    from .executor import Executor


class Interrupted(Exception):
    """The interrupt flag was seen (at a node start or in a progress callback)."""


class InjectedFailure(Exception):
    """A failure asked for by the ``fail`` knob; reported with the rule's type and message."""


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


class PromptRun:
    """One prompt from ``execution_start`` to its end; ``run`` answers whether it succeeded."""

    def __init__(
        self, executor: Executor, prompt_id: str, prompt: dict[str, Any], extra_data: dict[str, Any]
    ) -> None:
        self.ex = executor
        self.hub = executor.hub
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.extra_data = extra_data
        #: the socket the prompt's frames go to (its client_id), None: only broadcasts
        self.sid: str | None = executor.client_id
        #: the frames the history entry keeps (``status.messages``)
        self.messages: list[list[Any]] = []
        self.progress = ProgressRegistry(prompt_id)
        self.results: dict[str, tuple[Any, ...]] = {}
        #: the history entry's ``outputs`` and ``meta``
        self.ui_outputs: dict[str, Any] = {}
        self.meta_outputs: dict[str, Any] = {}
        self.executed: list[str] = []
        self.current_outputs = list(prompt.keys())
        self.sigs: dict[str, Any] = {}
        #: the hidden PROMPT as nodes see it: the real server writes is_changed into it
        self.png_prompt: dict[str, Any] = {}

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": _now_ms()}
        self.messages.append([event, data])
        if self.sid is not None or broadcast:
            self.hub.send(event, data, self.sid)

    def _send_progress_state(self) -> None:
        self.hub.send("progress_state", self.progress.payload(), self.sid)

    def _flagged(self, sid: str) -> bool:
        return self.hub.flags.get(sid, {}).get("supports_preview_metadata") is True

    async def run(self, outputs_to_execute: list[str]) -> bool:
        """Run the nodes the outputs need, in ComfyUI's order; False when it failed or was
        interrupted (its frame is sent and kept), True after ``execution_success``."""
        self._begin()
        order = ExecutionList(self.prompt, self.ex.catalogue, lambda n: self.sigs[n] in self.ex.cache)
        for out_id in outputs_to_execute:
            order.add_node(out_id)
        while not order.is_empty():
            node_id = order.stage()
            if node_id is None:
                self._cycle(next(iter(order.pending)))
                return False
            hit = self.ex.cache.get(self.sigs[node_id])
            if hit is not None:
                self._cached(node_id, hit)
            elif not await self._execute(node_id):
                return False
            self.executed.append(node_id)
            order.complete(node_id)
        self.add_message("execution_success", {"prompt_id": self.prompt_id}, False)
        return True

    def _begin(self) -> None:
        """execution_start; the cache keeps only this prompt's signatures; execution_cached."""
        prompt = self.prompt
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, False)
        self.png_prompt = {k: dict(v) for k, v in prompt.items()}
        changed: dict[str, Any] = {}
        for nid, node in prompt.items():
            val = is_changed(node["class_type"], node.get("inputs", {}), self.ex.dirs)
            if val is not None:
                changed[nid] = val
                self.png_prompt[nid]["is_changed"] = [val]
        self.sigs = signatures(prompt, changed, self.ex.catalogue)
        wanted = set(self.sigs.values())
        self.ex.cache = {k: v for k, v in self.ex.cache.items() if k in wanted}
        cached_nodes = [nid for nid in prompt if self.sigs[nid] in self.ex.cache]
        self.add_message(
            "execution_cached", {"nodes": cached_nodes, "prompt_id": self.prompt_id}, False
        )

    def _cycle(self, blamed: str) -> None:
        """What ComfyUI reports for a graph cycle found at run time."""
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": blamed,
                "node_type": self.prompt[blamed]["class_type"],
                "executed": list(self.executed),
                "exception_message": "Dependency cycle detected",
                "exception_type": "graph.DependencyCycleError",
                "traceback": [],
                "current_inputs": [],
                "current_outputs": self.current_outputs,
            },
            False,
        )

    def _cached(self, node_id: str, hit: tuple[tuple[Any, ...], dict[str, Any] | None]) -> None:
        """A node whose signature is cached: its outputs and ui come from the cache."""
        if self.sid is not None:
            self._executed_frame(node_id, hit[1] or None)
        if hit[1]:
            self.ui_outputs[node_id] = hit[1]
            self.meta_outputs[node_id] = _meta(node_id)
        self.progress.finish(node_id)
        self._send_progress_state()
        self.results[node_id] = hit[0]

    def _executed_frame(self, node_id: str, ui: dict[str, Any] | None) -> None:
        assert self.sid is not None
        self.hub.send(
            "executed",
            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id},
            self.sid,
        )

    async def _execute(self, node_id: str) -> bool:
        """Run one node; False when it failed or was interrupted (its frame is sent)."""
        ex, sid = self.ex, self.sid
        class_type = self.prompt[node_id]["class_type"]
        self.progress.start(node_id)
        self._send_progress_state()
        if sid is not None:
            ex.last_node_id = node_id
            self.hub.send(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id},
                sid,
            )
        inputs: dict[str, Any] = {}
        try:
            if ex.interrupt_flag:
                raise Interrupted()
            while ex.knobs.hang:  # noqa: ASYNC110 - a plain attribute knob
                await asyncio.sleep(0.02)
            inputs = self._inputs(self.prompt[node_id])
            rule = ex.knobs.take_failure(node_id, class_type)
            if rule is not None:
                raise InjectedFailure(rule.exception_type, rule.exception_message)
            outs, ui = await run_node(self._node_context(node_id, class_type), inputs)
        except Interrupted:
            self.add_message(
                "execution_interrupted",
                {
                    "prompt_id": self.prompt_id,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(self.executed),
                },
                True,
            )
            return False
        except Exception as err:
            self._failed(node_id, class_type, inputs, err)
            return False
        self.results[node_id] = outs
        ex.cache[self.sigs[node_id]] = (outs, ui)
        if ui:
            self.ui_outputs[node_id] = ui
            self.meta_outputs[node_id] = _meta(node_id)
            if sid is not None:
                self._executed_frame(node_id, ui)
        self.progress.finish(node_id)
        self._send_progress_state()
        return True

    def _node_context(self, node_id: str, class_type: str) -> NodeContext:
        ex, sid, prompt_id = self.ex, self.sid, self.prompt_id

        async def on_progress(value: int, maximum: int, preview: bytes | None) -> None:
            if ex.interrupt_flag:
                raise Interrupted()
            self.progress.update(node_id, value, maximum)
            self._send_progress_state()
            if preview is not None and sid is not None and self._flagged(sid):
                self.hub.send_image(preview, _preview_meta(node_id, prompt_id, preview), sid)
            self.hub.send(
                "progress",
                {"value": value, "max": maximum, "prompt_id": prompt_id, "node": node_id},
                sid,
            )
            if preview is not None and (sid is None or not self._flagged(sid)):
                self.hub.send_image(preview, _preview_meta(node_id, prompt_id, preview), sid)
            await asyncio.sleep(0)

        return NodeContext(
            node_id=node_id,
            class_type=class_type,
            prompt_id=prompt_id,
            info=ex.catalogue.node(class_type) or {},
            dirs=ex.dirs,
            knobs=ex.knobs,
            counters=ex.counters,
            png_prompt=self.png_prompt,
            extra_pnginfo=self.extra_data.get("extra_pnginfo"),
            progress=on_progress,
        )

    def _failed(
        self, node_id: str, class_type: str, inputs: dict[str, Any], err: Exception
    ) -> None:
        if isinstance(err, InjectedFailure):
            exc_type, message = err.args[0], err.args[1]
            tb = ['  File "comfy_standin/executor.py", in execute\n    (injected failure)\n']
        else:
            exc_type, message = _exc_type(err), str(err)
            tb = traceback.format_tb(err.__traceback__)
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(self.executed),
                "exception_message": f"{message}\n",
                "exception_type": exc_type,
                "traceback": tb,
                "current_inputs": {k: [_format_value(v)] for k, v in inputs.items()},
                "current_outputs": self.current_outputs,
            },
            False,
        )

    def _inputs(self, node: dict[str, Any]) -> dict[str, Any]:
        """The node's input values: links resolved from results (or the cache), literals."""
        out: dict[str, Any] = {}
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                src = self.results.get(value[0])
                if src is None and value[0] in self.sigs:
                    # A cached source is never staged: its outputs come from the cache.
                    hit = self.ex.cache.get(self.sigs[value[0]])
                    src = hit[0] if hit is not None else None
                if src is None or value[1] >= len(src):
                    continue  # an optional input from a branch that did not run
                out[name] = src[value[1]]
            elif isinstance(value, dict) and "__value__" in value:
                out[name] = value["__value__"]
            else:
                out[name] = value
        return out


def signatures(prompt: dict[str, Any], changed: dict[str, Any], catalogue: Any) -> dict[str, Any]:
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
            if is_link(v):
                parts.append((name, "link", sig(v[0], depth + 1), v[1]))
            elif isinstance(v, (int, float, str, bool)) or v is None:
                parts.append((name, type(v).__name__, v))
            else:
                parts.append((name, "json", json.dumps(v, sort_keys=True)))
        info = catalogue.node(node["class_type"]) or {}
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


def _preview_meta(node_id: str, prompt_id: str, image: bytes) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "prompt_id": prompt_id,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
        # latent previews are JPEGs, SaveImageWebsocket's images PNGs
        "image_type": "image/jpeg" if image[:2] == b"\xff\xd8" else "image/png",
    }
