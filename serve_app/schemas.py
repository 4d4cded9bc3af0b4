"""Request bodies of the HTTP API (pydantic). Unknown fields are refused where they matter: a
typo in a task request must not silently drop what the client meant."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator


class SubmitTask(BaseModel):
    """POST /tasks."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"workflow": "solid", "params": {"width": 64, "height": 64, "color": 16711680},
                 "client_task_id": "order-1234", "priority": 0}
            ]
        },
    )

    workflow: str | None = Field(
        default=None, min_length=1, max_length=200, description="Name of a served workflow"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The workflow's parameters")
    graph: dict[str, Any] | None = Field(
        default=None,
        description="An API-format ComfyUI graph, instead of `workflow` (needs RAW_GRAPHS=true)",
    )
    files: dict[str, str] | None = Field(
        default=None,
        description="Images the graph's LoadImage nodes name: file name -> base64, data: URL "
        "or http(s) URL",
    )
    client_task_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="Your id for this task; the same id with the same body is answered once",
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="http(s) URL called when the task ends"
    )
    priority: int = Field(
        default=0, ge=-1_000_000, le=1_000_000, description="Higher runs first (within a tenant)"
    )
    # Checked by policies.access (a tenant key naming another tenant is 403, not 422).
    tenant: str | None = Field(
        default=None,
        description="The tenant the task belongs to: an admin key may name one (else `default`); "
        "a tenant key's tasks are its tenant's",
    )
    workflow_version: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Run this version of the workflow (GET /workflows/{name}/versions) rather "
        "than the current one; a version the service does not hold answers 409",
    )

    @model_validator(mode="after")
    def _workflow_or_graph(self) -> SubmitTask:
        if (self.workflow is None) == (self.graph is None):
            raise ValueError("give either `workflow` (a served workflow's name) or `graph`")
        if self.workflow_version is not None and self.graph is not None:
            raise ValueError("`workflow_version` is a workflow's; a graph is its own version")
        if self.graph is not None and self.params:
            raise ValueError("`params` are a workflow's; a graph carries its own values")
        if self.files is not None and self.graph is None:
            raise ValueError("`files` go with a `graph`; a workflow takes images as params")
        return self


class RerunTask(BaseModel):
    """POST /tasks/{task_id}/rerun (every field optional)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"params": {"text": "a dog"}, "same_seed": True}]},
    )

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
    model_config = ConfigDict(
        extra="ignore",
        coerce_numbers_to_str=True,
        json_schema_extra={
            "examples": [{"service_type": "solid", "client_task_id": "1234",
                          "params": {"width": 64, "height": 64}}]
        },
    )

    service_type: str = Field(min_length=1, max_length=200)
    client_task_id: Annotated[
        str | None,
        # What is accepted: a number is taken as its text (documented, or a client generated
        # from the document could not send what those clients send).
        WithJsonSchema(
            {"anyOf": [{"type": "string", "maxLength": 128}, {"type": "number"}, {"type": "null"}],
             "description": "Your id for this task (a number is taken as its text)"}
        ),
    ] = Field(default=None, max_length=128)
    client_callback_url: str | None = Field(default=None, max_length=2048)
    params: dict[str, Any] = Field(default_factory=dict)


class AddEndpoint(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"endpoint": "127.0.0.1:8189", "labels": ["gpu"]}]},
    )

    # host:port; control characters and spaces can be no part of one (and would reach the
    # router's name table and the ComfyUI URL as they are).
    endpoint: str = Field(min_length=3, max_length=300, pattern=r"^[^\x00-\x20\x7f]+$")
    labels: list[str] = Field(default_factory=list, max_length=32)
