"""Python client of comfy-fleet: `Client` (sync), `AsyncClient` (asyncio), typed models, one
error tree, and `verify_webhook` for webhook receivers. The `comfy-fleet` command is `cli`."""

from __future__ import annotations

from comfy_fleet_client.async_client import AsyncClient
from comfy_fleet_client.client import Client
from comfy_fleet_client.errors import (
    ComfyFleetError,
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
    WebhookVerificationError,
)
from comfy_fleet_client.models import (
    Batch,
    Endpoint,
    Event,
    Output,
    Preview,
    QueueUpdate,
    StreamEvent,
    StreamMessage,
    Task,
    TaskPage,
    WebhookEvent,
    Workflow,
)
from comfy_fleet_client.protocol import task_body
from comfy_fleet_client.webhooks import verify_webhook

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Batch",
    "Client",
    "ComfyFleetError",
    "Conflict",
    "Endpoint",
    "Event",
    "Forbidden",
    "IntegrityError",
    "InvalidRequest",
    "NotFound",
    "Output",
    "Preview",
    "QueueUpdate",
    "RateLimited",
    "StreamEvent",
    "StreamMessage",
    "Task",
    "TaskPage",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WaitTimeout",
    "WebhookEvent",
    "WebhookVerificationError",
    "Workflow",
    "task_body",
    "verify_webhook",
]
