"""`GET /healthz` and `GET /readyz`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Ready when the database answers and at least one endpoint is connected (200); the
    same body with 503 otherwise."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ready": True, "database": "ok", "endpoints_connected": 2}]
        }
    )

    ready: bool
    database: Literal["ok", "unavailable"]
    endpoints_connected: int = Field(ge=0)
