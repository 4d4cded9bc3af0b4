"""A served workflow, its versions, and what a reload changed (`GET /workflows`,
`GET /workflows/{name}/versions`, `POST /workflows/reload`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Workflow(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "solid",
                    "description": "A solid-colour image (or a batch of them).",
                    "params": {
                        "type": "object",
                        "properties": {"width": {"type": "integer", "minimum": 1,
                                                 "maximum": 4096, "default": 512}},
                        "additionalProperties": False,
                    },
                    "labels": [],
                    "version": "3c1f…",
                }
            ]
        }
    )

    name: str
    description: str
    params: dict[str, Any] = Field(description="JSON Schema of the task's `params`")
    labels: list[str] = Field(description="labels an endpoint needs to run it")
    version: str = Field(description="digest of the workflow's two files")


class WorkflowVersion(BaseModel):
    """One version of a workflow the service holds."""

    version: str = Field(description="digest of the workflow's two files")
    created_at: datetime | None = Field(
        description="when a task first used it; null for the current files' version until then"
    )
    current: bool = Field(description="whether it is the version of the files served now")


class WorkflowVersionFiles(WorkflowVersion):
    """One version with what it holds."""

    description: str
    graph: dict[str, Any] = Field(description="the API-format graph")
    manifest: str = Field(description="the TOML manifest, as written")


class ReloadResult(BaseModel):
    added: list[str]
    changed: list[str]
    removed: list[str]
    errors: list[str] = Field(description="one message per workflow that could not be loaded")
    endpoints: dict[str, list[str] | None] = Field(
        description="per endpoint, the workflows it can run now (null: not known yet)"
    )
