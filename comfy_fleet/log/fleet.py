"""Facts about the fleet (not about one task): endpoints added and removed at run time.

Stored in `fleet_events`, append-only; `endpoints(configured, events)` folds them over the
configured COMFYUI_ENDPOINTS into the endpoints to serve, so a restart keeps run-time changes.

| type              | emitted by | meaning |
|-------------------|------------|---------|
| endpoint.added    | router     | POST /endpoints: serve this ComfyUI (with labels) |
| endpoint.removed  | router     | DELETE /endpoints/{e}: drain it, then stop serving it |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from comfy_fleet import errors


@dataclass(frozen=True, kw_only=True)
class FleetEvent:
    TYPE: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    def payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class EndpointAdded(FleetEvent):
    TYPE: ClassVar[str] = "endpoint.added"
    endpoint: str
    labels: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class EndpointRemoved(FleetEvent):
    TYPE: ClassVar[str] = "endpoint.removed"
    endpoint: str


REGISTRY: dict[str, type[FleetEvent]] = {c.TYPE: c for c in (EndpointAdded, EndpointRemoved)}


def decode(type_: str, _version: int, payload: Mapping[str, Any]) -> FleetEvent:
    cls = REGISTRY.get(type_)
    if cls is None:
        raise errors.FleetError(f"unknown fleet event type {type_!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in payload.items() if k in names})


def endpoints(configured: Mapping[str, list[str]], events: Iterable[FleetEvent]) -> dict[str, list[str]]:
    """Configured endpoints (name → labels), then the run-time changes in order."""
    result = {name: list(labels) for name, labels in configured.items()}
    for ev in events:
        if isinstance(ev, EndpointAdded):
            result[ev.endpoint] = list(ev.labels)
        elif isinstance(ev, EndpointRemoved):
            result.pop(ev.endpoint, None)
    return result
