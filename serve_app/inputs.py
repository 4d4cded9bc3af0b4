"""Image inputs: decoded or fetched, checked, and kept in S3 until dispatch uploads them."""

from __future__ import annotations

from typing import Any

from core import errors


async def stage_images(
    services: Any, task_id: str, workflow: Any, resolved: dict[str, Any], names: dict[str, str]
) -> list[dict[str, Any]]:
    raise errors.InvalidRequest("image inputs are not supported yet")
