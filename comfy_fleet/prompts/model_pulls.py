"""Models by URL on an endpoint's host (docs/api.md §7.5): which it holds, and pulling one.

Before it sends a task's prompt, the endpoint asks the project's ComfyUI extension to pull each
of the task's models from the bucket (a presigned GET of ``models/<sha256>``) into the model's
folder under the name the service chose, keeping the host's pulled models within
MODEL_CACHE_BYTES and never evicting one its queued or running prompts use. ``judge`` (pure)
says what an answer of the pull route means for the task.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from comfy_fleet import errors
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet.log import events

log = logging.getLogger("comfy_fleet.endpoint")


class Verdict(enum.Enum):
    PULLED = "pulled"
    #: the task fails with the answer's code (the model or the request is at fault)
    FAIL = "fail"
    #: the task goes back to the router (this host cannot now: full, bucket unreachable)
    REQUEUE = "requeue"
    #: this host's route cannot pull from our bucket (not configured): requeue, stop routing
    NO_ROUTE = "no_route"


#: Codes of the pull route that end the task: the model itself is at fault.
FINAL_CODES = frozenset({"model_checksum_mismatch", "model_too_large", "bad_request",
                         "invalid_folder", "invalid_filename"})
#: Codes that mean the route is unusable here (its bucket is not ours, or none is configured).
NO_ROUTE_CODES = frozenset({"not_configured", "url_forbidden"})


@dataclass(frozen=True)
class PullOutcome:
    verdict: Verdict
    code: str = ""
    message: str = ""
    fetched: bool = False
    size: int = 0
    seconds: float = 0.0
    evicted: tuple[str, ...] = ()


def judge(status: int, body: Any) -> PullOutcome:
    """What one answer of ``POST /comfy-fleet/models/pull`` means (pure)."""
    data = body if isinstance(body, dict) else {}
    if status == 200:
        evicted = tuple(
            str(e.get("sha256") if isinstance(e, dict) else e) for e in data.get("evicted") or ()
        )
        return PullOutcome(
            Verdict.PULLED, fetched=data.get("fetched") is True, size=int(data.get("size") or 0),
            seconds=float(data.get("seconds") or 0.0), evicted=evicted,
        )
    err = data.get("error") if isinstance(data.get("error"), dict) else {}
    code = str(err.get("code") or f"http_{status}")
    message = str(err.get("message") or f"the model pull answered HTTP {status}")
    if code in NO_ROUTE_CODES or status == 404:
        return PullOutcome(Verdict.NO_ROUTE, code, message)
    if code in FINAL_CODES:
        final = code if code.startswith("model_") else "model_fetch_failed"
        return PullOutcome(Verdict.FAIL, final, message)
    return PullOutcome(Verdict.REQUEUE, code, message)


class PullProblem(errors.FleetError):
    """A model could not be pulled onto the host; ``args[1]`` is the PullOutcome's fields."""

    code = "model_fetch_failed"

    @property
    def outcome(self) -> PullOutcome:
        return PullOutcome(**{**self.details, "verdict": Verdict(self.details["verdict"])})


@dataclass
class ModelHost:
    """What this endpoint knows of its host's pulled models."""

    name: str
    client: ComfyClient
    #: whether the host's extension can pull from our bucket (None: not asked yet)
    route: bool | None = None
    #: sha256s of the models it holds
    held: set[str] = field(default_factory=set)

    def status(self) -> dict[str, Any]:
        """Its part of the endpoint's status (the router's routing, GET /endpoints)."""
        return {"models_route": self.route, "models": sorted(self.held)}

    async def probe(self) -> None:
        """Ask the host (after each connect) whether it pulls models, and which it holds."""
        try:
            info = await self.client.models_info()
            self.route = bool(info and info.get("configured"))
            if self.route:
                self.held = {
                    str(m["sha256"]) for m in await self.client.models_held() if "sha256" in m
                }
        except errors.EndpointUnavailable:
            log.debug("model route probe of %s failed", self.name, exc_info=True)

    async def pull(
        self, models: Iterable[dict[str, Any]], *, presign: Any, in_use: set[str],
        cache_bytes: int, timeout_s: float,
    ) -> list[events.TaskModelFetched]:
        """Pull each model (``presign(s3_key)`` gives its URL); a ``task.model_fetched`` for
        each that had to be fetched. Raises PullProblem when one cannot be pulled."""
        fetched: list[events.TaskModelFetched] = []
        for model in models:
            started = time.monotonic()
            status, body = await self.client.pull_model({
                "url": await presign(model["s3_key"]), "sha256": model["sha256"],
                "folder": model["folder"], "filename": model["filename"],
                "in_use": sorted(in_use | {model["sha256"]}), "cache_bytes": cache_bytes,
            }, timeout_s=timeout_s)
            outcome = judge(status, body)
            if outcome.verdict is not Verdict.PULLED:
                if outcome.verdict is Verdict.NO_ROUTE:
                    self.route = False
                details = {**outcome.__dict__, "verdict": outcome.verdict.value}
                raise PullProblem(f"{self.name}: {outcome.message}", details)
            self.held.add(model["sha256"])
            self.held.difference_update(outcome.evicted)
            if outcome.fetched:
                fetched.append(events.TaskModelFetched(
                    sha256=model["sha256"], bytes=outcome.size, where="endpoint",
                    seconds=round(outcome.seconds or time.monotonic() - started, 3),
                    endpoint=self.name,
                ))
        return fetched
