"""Schemathesis' run against a live service, shared by tests/api (the shared fleet, no keys) and
tests/security/test_tenants.py (a service with keys): the error-shape check (registered once,
here), the bounded and repeatable configuration, and the engine's run."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events as st_events

#: Examples per operation and generation mode (positive, negative).
MAX_EXAMPLES = 20
SEED = 14


@schemathesis.check
def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is `{"error": {"code", "message"[, "details"]}}`, whatever its
    status (readyz's 503 is its readiness body, documented as such)."""
    if response.status_code < 400 or case.operation.definition.raw.get("operationId") == "readyz":
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body}"
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], f"no code: {body}"
    assert isinstance(error.get("message"), str), f"no message: {body}"
    assert set(error) <= {"code", "message", "details"}, f"unknown keys: {body}"
    return True


def _config(base_url: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            "request-timeout": 30,
            # Generation is fast; the service's answers are slow I/O by Hypothesis' measure.
            "suppress-health-check": ["all"],
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "mode": "all",
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                # The fleet has no keys (loopback): routes answer without one, as documented.
                "ignored_auth": {"enabled": False},
                # A body valid by the schema may still name a workflow that is not served, a
                # task that does not exist, or a reused client_task_id: 404/409/422 by design.
                "positive_data_acceptance": {"enabled": False},
            },
        }
    )


def _run(schema: Any) -> tuple[list[str], dict[str, int]]:
    """Run Schemathesis' engine (what `schemathesis run` runs): the failures, each with the
    curl command that reproduces it, and the requests sent per operation."""
    failures: list[str] = []
    sent: dict[str, int] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, st_events.ScenarioFinished):
            label = event.recorder.label
            sent[label] = sent.get(label, 0) + len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    info = check.failure_info
                    if info is not None:
                        failures.append(
                            f"{label}: {check.name}: {info.failure.title}: "
                            f"{info.failure.message}\n  {info.code_sample}"
                        )
        elif isinstance(event, st_events.NonFatalError):
            failures.append(f"{event.label}: error: {event.value!r}")
        elif isinstance(event, st_events.FatalError):
            raise event.exception
    return failures, sent
