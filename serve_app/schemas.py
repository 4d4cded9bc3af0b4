"""Request bodies of the HTTP API (pydantic). Unknown fields are refused where they matter: a
typo in a task request must not silently drop what the client meant."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SubmitTask(BaseModel):
    """POST /tasks."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=200, description="Name of a served workflow")
    params: dict[str, Any] = Field(default_factory=dict, description="The workflow's parameters")
    client_task_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="Your id for this task; the same id with the same body is answered once",
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="http(s) URL called when the task ends"
    )
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000, description="Higher runs first")
    workflow_version: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Run this version of the workflow (GET /workflows/{name}/versions) rather "
        "than the current one; a version the service does not hold answers 409",
    )


class RerunTask(BaseModel):
    """POST /tasks/{task_id}/rerun."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters to change; the others are the task's own"
    )
    priority: int | None = Field(
        default=None, ge=-1_000_000, le=1_000_000, description="Default: the task's priority"
    )
    same_seed: bool = Field(
        default=False, description="Keep the seeds the task drew (default: draw them afresh)"
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="Default: the task's callback_url"
    )


class LegacySubmit(BaseModel):
    """The original ComfyUI-server route: POST {ROUTE_PREFIX}."""

    # Its early clients sent numeric client_task_ids; they are kept as strings.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    service_type: str = Field(min_length=1, max_length=200)
    client_task_id: str | None = Field(default=None, max_length=128)
    client_callback_url: str | None = Field(default=None, max_length=2048)
    params: dict[str, Any] = Field(default_factory=dict)


class AddEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # host:port; control characters and spaces can be no part of one (and would reach the
    # router's name table and the ComfyUI URL as they are).
    endpoint: str = Field(min_length=3, max_length=300, pattern=r"^[^\x00-\x20\x7f]+$")
    labels: list[str] = Field(default_factory=list, max_length=32)
