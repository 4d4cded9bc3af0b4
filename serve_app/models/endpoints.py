"""The fleet's ComfyUI endpoints (`GET`, `POST`, `DELETE /endpoints`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Endpoint(BaseModel):
    """An endpoint as the router sees it. One that does not answer its status shows only the
    required fields."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "endpoint": "127.0.0.1:8188", "state": "connected", "connected": True,
                    "queue_remaining": 0, "inflight": 1, "foreign_queue": 0,
                    "labels": ["gpu"], "last_seen": "2026-12-07T07:00:00.000000Z",
                    "reconnects": 0, "zombies": 0, "cleanup_extension": True,
                    "workflows": ["solid", "invert"],
                    "model_files": {"checkpoints": 2, "loras": 14, "vae": 3},
                }
            ]
        }
    )

    endpoint: str = Field(description="host:port")
    state: Literal["connected", "disconnected", "draining"]
    connected: bool
    queue_remaining: int = Field(description="prompts in its ComfyUI queue")
    inflight: int = Field(description="tasks of ours on it")
    labels: list[str]
    last_seen: datetime | None
    foreign_queue: int | None = Field(default=None, description="prompts of other clients")
    reconnects: int | None = None
    zombies: int | None = None
    cleanup_extension: bool | None = Field(
        default=None, description="whether its ComfyUI has the cleanup extension (null: unknown)"
    )
    workflows: list[str] | None = Field(default=None, description="workflows it can run")
    models_route: bool | None = Field(
        default=None, description="whether its ComfyUI can pull models given by URL (null: unknown)"
    )
    models: list[str] | None = Field(
        default=None, description="sha256s of the models given by URL that it holds"
    )
    model_files: dict[str, int] | None = Field(
        default=None,
        description="how many files each model folder holds, as its ComfyUI's core loaders "
        "list them in /object_info (re-read while connected); null: not read yet",
    )


class EndpointAdded(BaseModel):
    endpoint: str
    state: Literal["added", "known"] = Field(description="known: it was already in the fleet")
    labels: list[str]


class EndpointRemoval(BaseModel):
    endpoint: str
    state: Literal["draining"]
    inflight: int = Field(description="tasks still on it; it goes once they end")
