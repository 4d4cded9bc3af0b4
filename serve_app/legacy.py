"""The original ComfyUI-server route, kept for its clients."""

from __future__ import annotations

from typing import Any

from core import errors


async def submit(services: Any, body: Any, view: Any) -> Any:
    raise errors.InvalidRequest("the original route is not available yet")


async def webhook_body(state: Any, store: Any, expires_s: int) -> dict[str, Any]:
    raise errors.InvalidRequest("the original route is not available yet")
