"""/healthz and /readyz: open to load balancers (no key needed, nothing secret in them)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve_app.models import health as models
from serve_app.responses import JSON
from serve_app.routes import context

router = APIRouter(tags=["health"])

#: How long each readiness check may take before it counts as failed.
CHECK_TIMEOUT_S = 3.0


@router.get("/healthz", summary="Alive", operation_id="healthz", response_model=models.Health)
async def healthz() -> Response:
    return JSON({"status": "ok"})


@router.get(
    "/readyz",
    summary="Database reachable and at least one endpoint connected",
    operation_id="readyz",
    response_model=models.Readiness,
    response_description="Ready",
    responses={503: {"model": models.Readiness, "description": "Not ready (same body)"}},
)
async def readyz(request: Request) -> Response:
    s = context.services(request)
    checks: dict[str, Any] = {}
    try:
        await asyncio.wait_for(s.log.ping(), CHECK_TIMEOUT_S)
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
    try:
        stats = await asyncio.wait_for(s.router.stats(), CHECK_TIMEOUT_S)
        connected = sum(1 for e in stats["endpoints"].values() if e["connected"])
        checks["endpoints_connected"] = connected
        # A free refresh of the admission estimate (serve_app.submission).
        s.waiting_estimate = stats["waiting"]
    except Exception:
        checks["endpoints_connected"] = 0
    ready = checks["database"] == "ok" and checks["endpoints_connected"] > 0
    return JSON({"ready": ready, **checks}, status_code=200 if ready else 503)
