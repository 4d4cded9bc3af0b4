"""The one exception tree of comfy-fleet.

    FleetError
    ├── ConfigError                  a setting is missing or malformed (names the variable)
    ├── Forbidden                    → HTTP 403: this key may not do that (docs/api.md §7.1)
    ├── NotFound                     → HTTP 404
    │   ├── TaskNotFound
    │   ├── WorkflowNotFound
    │   ├── EndpointNotFound
    │   └── BatchNotFound
    ├── Conflict                     → HTTP 409
    │   ├── ConcurrencyConflict      a stale writer appended at a seq that is taken
    │   ├── IdempotencyConflict      same client_task_id, different body
    │   ├── DuplicateClientTaskId    the log already holds a task with this client_task_id
    │   ├── BatchIdempotencyConflict same client_batch_id, different body
    │   ├── DuplicateClientBatchId   the log already holds a batch with this client_batch_id
    │   ├── WorkflowVersionUnknown   a workflow version the service does not hold
    │   └── RerunInputsGone          a rerun of a task whose image inputs were not kept
    ├── InvalidRequest               → HTTP 422 (or 400 / 413 by `status`)
    │   ├── WorkflowParamsInvalid
    │   ├── UnknownWorkflow          a task names a workflow that is not served
    │   ├── ManifestInvalid          a workflow manifest or graph is broken (names file and key)
    │   ├── InputRejected            an input (image, URL) is unusable
    │   ├── PayloadTooLarge          → HTTP 413
    │   ├── UrlForbidden             a URL resolves to an address the policy denies
    │   ├── GraphInvalid             a raw graph is refused (names the node)
    │   ├── ModelChecksumMismatch    a model's bytes do not have the sha256 the request gave
    │   ├── ModelFetchFailed         a model URL could not be fetched (status, network, time)
    │   ├── ModelTooLarge            → HTTP 413: a model is over MAX_MODEL_BYTES
    │   └── RawGraphsDisabled        → HTTP 403: raw graphs are off here, or not for this key
    ├── Unavailable                  → HTTP 503, retryable
    │   ├── DatabaseUnavailable
    │   ├── StorageUnavailable
    │   ├── EndpointUnavailable
    │   └── Overloaded               → HTTP 429
    └── EndpointFailure              ComfyUI refused or failed a prompt
        ├── PromptRejected           400 from POST /prompt (carries node_errors)
        └── ComfyExecutionError      execution_error from the websocket or history

Every class keeps all its state in ``args`` so that it survives pickling between Ray actors;
the class docstring is the default message. ``code`` is the snake_case error code of the API.
"""

from __future__ import annotations

from typing import Any


class FleetError(Exception):
    """An error of comfy-fleet."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        super().__init__(message, details)

    @property
    def message(self) -> str:
        msg = self.args[0] if self.args else None
        return msg or (type(self).__doc__ or type(self).__name__).strip()

    @property
    def details(self) -> Any:
        return self.args[1] if len(self.args) > 1 else None

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        """The contract's error body: ``{"error": {"code", "message", "details"}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class ConfigError(FleetError):
    """A configuration value is invalid."""

    code = "config_invalid"


class Forbidden(FleetError):
    """This key may not do that."""

    code = "forbidden"
    status = 403


class NotFound(FleetError):
    """Not found."""

    code = "not_found"
    status = 404


class TaskNotFound(NotFound):
    """No task has this id."""

    code = "task_not_found"


class WorkflowNotFound(NotFound):
    """No workflow has this name."""

    code = "workflow_not_found"


class EndpointNotFound(NotFound):
    """No ComfyUI endpoint has this address."""

    code = "endpoint_not_found"


class BatchNotFound(NotFound):
    """No batch has this id."""

    code = "batch_not_found"


class Conflict(FleetError):
    """The request conflicts with the current state."""

    code = "conflict"
    status = 409


class ConcurrencyConflict(Conflict):
    """Another writer appended to this task first."""

    code = "concurrency_conflict"


class IdempotencyConflict(Conflict):
    """A task with this client_task_id exists with a different body."""

    code = "client_task_id_conflict"


class DuplicateClientTaskId(Conflict):
    """A task with this client_task_id is already recorded."""

    code = "client_task_id_taken"


class BatchIdempotencyConflict(Conflict):
    """A batch with this client_batch_id exists with a different body."""

    code = "client_batch_id_conflict"


class DuplicateClientBatchId(Conflict):
    """A batch with this client_batch_id is already recorded for the tenant."""

    code = "client_batch_id_taken"


class WorkflowVersionUnknown(Conflict):
    """The service holds no such version of this workflow."""

    code = "workflow_version_unknown"


class RerunInputsGone(Conflict):
    """The task's image inputs were not kept (it was recorded before inputs were), so it
    cannot run again from them; submit it anew with its images."""

    code = "rerun_inputs_gone"


class InvalidRequest(FleetError):
    """The request is invalid."""

    code = "invalid_request"
    status = 422


class WorkflowParamsInvalid(InvalidRequest):
    """The workflow parameters are invalid."""

    code = "params_invalid"


class UnknownWorkflow(InvalidRequest):
    """No workflow of this name is served."""

    code = "unknown_workflow"


class ManifestInvalid(InvalidRequest):
    """A workflow manifest or its graph is invalid."""

    code = "manifest_invalid"


class InputRejected(InvalidRequest):
    """An input could not be used."""

    code = "input_rejected"


class PayloadTooLarge(InvalidRequest):
    """The request or one of its inputs is too large."""

    code = "payload_too_large"
    status = 413


class UrlForbidden(InvalidRequest):
    """The URL is not allowed."""

    code = "url_forbidden"


class GraphInvalid(InvalidRequest):
    """The raw graph cannot run on this fleet."""

    code = "graph_invalid"


class ModelChecksumMismatch(InvalidRequest):
    """The model's bytes do not have the sha256 the request gave."""

    code = "model_checksum_mismatch"


class ModelFetchFailed(InvalidRequest):
    """The model could not be fetched from its URL."""

    code = "model_fetch_failed"


class ModelTooLarge(InvalidRequest):
    """The model is larger than MAX_MODEL_BYTES."""

    code = "model_too_large"
    status = 413


class RawGraphsDisabled(InvalidRequest):
    """Raw graphs are not accepted here (RAW_GRAPHS)."""

    code = "raw_graphs_disabled"
    status = 403


class Unavailable(FleetError):
    """A dependency is unavailable; retry later."""

    code = "unavailable"
    status = 503


class DatabaseUnavailable(Unavailable):
    """The database is unavailable."""

    code = "database_unavailable"


class StorageUnavailable(Unavailable):
    """The object store is unavailable."""

    code = "storage_unavailable"


class EndpointUnavailable(Unavailable):
    """The ComfyUI endpoint is unavailable."""

    code = "endpoint_unavailable"


class Overloaded(Unavailable):
    """Too many tasks are waiting; retry later."""

    code = "overloaded"
    status = 429


class EndpointFailure(FleetError):
    """ComfyUI refused or failed the prompt."""

    code = "comfyui_error"
    status = 502


class PromptRejected(EndpointFailure):
    """ComfyUI rejected the prompt."""

    code = "comfyui_prompt_rejected"


class ComfyExecutionError(EndpointFailure):
    """ComfyUI failed while executing the prompt."""

    code = "comfyui_execution_error"


ALL_ERRORS: tuple[type[FleetError], ...] = tuple(
    obj
    for obj in list(globals().values())
    if isinstance(obj, type) and issubclass(obj, FleetError)
)
