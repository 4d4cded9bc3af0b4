"""Fault knobs and counters of one stand-in instance.

Knobs are plain attributes, changed at run time from Python (``s.knobs.node_delay = 0.2``) or
through ``POST /_standin/knobs`` (a JSON object of the same names). Counters only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FailRule:
    """Fail the next ``count`` prompts that reach ``node`` (a class_type or a node id)."""

    node: str
    count: int = 1
    exception_type: str = "RuntimeError"
    exception_message: str = "comfy_standin: injected failure"


@dataclass
class Knobs:
    """Run-time behaviour switches; every field is safe to change while the server runs."""

    #: seconds each node takes (on top of its real work), for every class_type
    node_delay: float = 0.0
    #: seconds per class_type, overriding ``node_delay``
    node_delays: dict[str, float] = field(default_factory=dict)
    #: steps a simulated sampler reports when its inputs name none
    sampler_steps: int = 4
    #: latent previews of sampler steps, as the real server's `--preview-method`: "none" sends
    #: none (the real server's default); anything else ("auto", "latent2rgb", "taesd") sends a
    #: JPEG after each step's `progress`, as a GPU host run with previews on does
    preview_method: str = "auto"
    #: injected run-time failures, consumed in order
    fail: list[FailRule] = field(default_factory=list)
    #: accept TCP connections but answer nothing: requests wait, websocket frames are held
    #: back and the worker pauses at the next node (the control routes keep answering)
    hang: bool = False
    #: seconds GET /view waits before answering
    view_delay: float = 0.0
    #: the next N accepted prompts get their 200 and then vanish (as after a crash)
    lose_next_prompts: int = 0
    #: the worker takes no prompt while set: accepted prompts stay pending
    stall_worker: bool = False
    #: refuse websocket upgrades (HTTP 503) while set
    refuse_websockets: bool = False
    #: serve the comfy-fleet cleanup extension routes (404 when off, as without it)
    cleanup_extension: bool = True
    #: the extension version served: 1 is one file a request (no batches), 2 adds batches
    cleanup_extension_version: int = 2
    #: serve the comfy-fleet extension's model routes (404 when off, as without them)
    models_extension: bool = True
    #: the bucket models may be pulled from (scheme://host[:port]/bucket); "" refuses pulls
    model_bucket_url: str = field(
        default_factory=lambda: os.environ.get("COMFY_FLEET_MODEL_BUCKET_URL", ""))
    #: the disk budget of fetched models, bytes
    model_cache_bytes: int = field(
        default_factory=lambda: int(os.environ.get("COMFY_FLEET_MODEL_CACHE_BYTES") or 50 * 1024**3))

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # Wake whoever waits for a knob to change (`changed`), in its own loop.
        for loop, event in self.__dict__.pop("_waiters", ()):
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    async def changed(self, timeout_s: float = 1.0) -> None:
        """Return when a knob is next assigned (from any thread), or after `timeout_s` (a
        knob changed in place, e.g. a list appended to, is not seen)."""
        event = asyncio.Event()
        self.__dict__.setdefault("_waiters", []).append((asyncio.get_running_loop(), event))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    def delay_for(self, class_type: str) -> float:
        return self.node_delays.get(class_type, self.node_delay)

    def take_failure(self, node_id: str, class_type: str) -> FailRule | None:
        """The rule that fails this node now, with its count consumed; or None."""
        for rule in self.fail:
            if rule.count > 0 and rule.node in (node_id, class_type):
                rule.count -= 1
                if rule.count == 0:
                    self.fail.remove(rule)
                return rule
        return None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a JSON object of knob values; unknown names raise KeyError."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise KeyError(key)
        for key, value in changes.items():
            if key == "fail":
                value = [r if isinstance(r, FailRule) else FailRule(**r) for r in value]
            setattr(self, key, value)


@dataclass
class Counters:
    """What the instance did, for tests to assert on. Kept across ``restart()``."""

    prompts_accepted: int = 0
    prompts_rejected: int = 0
    prompts_run: int = 0
    prompts_lost: int = 0
    files_written: int = 0
    files_deleted: int = 0
    #: requests to the cleanup extension's delete route (one file or a batch)
    cleanup_requests: int = 0
    uploads: int = 0
    #: requests to the extension's model pull route, and the models it fetched from the bucket
    model_pulls: int = 0
    models_fetched: int = 0
    #: GET /view requests (answered or not)
    views: int = 0
    #: GET /history/{prompt_id} requests
    history_reads: int = 0
    ws_connects: int = 0
    restarts: int = 0
    #: POST /interrupt requests (each one stops whatever runs)
    interrupts: int = 0

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)
