"""The fleet's metrics, through `ray.util.metrics` (exported on Ray's metrics endpoint with the
`ray_` prefix, e.g. `ray_comfy_fleet_tasks_ended_total`). See docs/observability.md and the
Grafana dashboard in `deploy/grafana/comfy-fleet.json`.

Metric objects are created on first use in the process that records them (Ray requires a
connected worker); outside Ray (unit tests of the plain workers) every call is a no-op.
"""

from __future__ import annotations

import functools
from typing import Any

#: Buckets (seconds) shared by the latency histograms: from a tiny prompt to a long video job.
BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]


class _Noop:
    def set(self, *_a: Any, **_k: Any) -> None: ...
    def inc(self, *_a: Any, **_k: Any) -> None: ...
    def observe(self, *_a: Any, **_k: Any) -> None: ...


_NOOP = _Noop()


def _ray_ready() -> bool:
    try:
        import ray

        return bool(ray.is_initialized())
    except Exception:
        return False


@functools.cache
def _metric(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    from ray.util import metrics

    if kind == "gauge":
        return metrics.Gauge(name, description=description, tag_keys=tags)
    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tags)
    return metrics.Histogram(name, description=description, boundaries=BUCKETS_S, tag_keys=tags)


def _get(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    if not _ray_ready():
        return _NOOP
    return _metric(kind, name, description, tags)


# --- endpoints -----------------------------------------------------------------------------


def endpoint_state(endpoint: str, *, queue_depth: int, inflight: int, connected: bool) -> None:
    tags = {"endpoint": endpoint}
    _get("gauge", "comfy_fleet_endpoint_queue_depth", "ComfyUI queue_remaining", ("endpoint",)).set(queue_depth, tags)
    _get("gauge", "comfy_fleet_endpoint_inflight", "prompts in flight on the endpoint", ("endpoint",)).set(inflight, tags)
    _get("gauge", "comfy_fleet_endpoint_connected", "1 when the websocket is up", ("endpoint",)).set(
        1 if connected else 0, tags
    )


def websocket_reconnect(endpoint: str) -> None:
    _get("counter", "comfy_fleet_websocket_reconnects_total", "websocket (re)connect attempts", ("endpoint",)).inc(
        1, {"endpoint": endpoint}
    )


# --- router ---------------------------------------------------------------------------------


def router_waiting(count: int) -> None:
    _get("gauge", "comfy_fleet_router_waiting_tasks", "tasks waiting in the router", ()).set(count)


def autoscale(*, requested_hosts: int, unplaced: int, retired: int) -> None:
    """The autoscaling loop's view (actors/autoscaler.py): what it asks Ray for."""
    _get("gauge", "comfy_fleet_autoscale_requested_hosts", "GPU hosts requested from Ray's autoscaler", ()).set(
        requested_hosts
    )
    _get("gauge", "comfy_fleet_autoscale_unplaced_tasks", "waiting tasks beyond the endpoints' room", ()).set(
        unplaced
    )
    _get("gauge", "comfy_fleet_autoscale_retired_endpoints", "endpoints let go for their node to be removed", ()).set(
        retired
    )


# --- tasks ----------------------------------------------------------------------------------


def task_ended(workflow: str, status: str) -> None:
    _get("counter", "comfy_fleet_tasks_ended_total", "tasks ended, by workflow and status", ("workflow", "status")).inc(
        1, {"workflow": workflow, "status": status}
    )


def queue_wait(workflow: str, seconds: float) -> None:
    _get("histogram", "comfy_fleet_queue_wait_seconds", "submitted to dispatched", ("workflow",)).observe(
        seconds, {"workflow": workflow}
    )


def comfyui_run(workflow: str, seconds: float) -> None:
    _get("histogram", "comfy_fleet_comfyui_run_seconds", "dispatched to ComfyUI done", ("workflow",)).observe(
        seconds, {"workflow": workflow}
    )


def output_store(workflow: str, seconds: float) -> None:
    _get("histogram", "comfy_fleet_output_store_seconds", "ComfyUI done to outputs stored", ("workflow",)).observe(
        seconds, {"workflow": workflow}
    )


def end_to_end(workflow: str, seconds: float) -> None:
    _get("histogram", "comfy_fleet_end_to_end_seconds", "submitted to ended", ("workflow",)).observe(
        seconds, {"workflow": workflow}
    )


# --- webhooks -------------------------------------------------------------------------------


def webhook_try(outcome: str) -> None:
    _get("counter", "comfy_fleet_webhook_tries_total", "webhook tries by outcome", ("outcome",)).inc(
        1, {"outcome": outcome}
    )
