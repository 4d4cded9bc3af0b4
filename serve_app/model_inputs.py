"""Models given by URL (docs/api.md §7.5): fetched into the bucket before the task is recorded.

Contract of `stage_models`: every model parameter given as `{"url", "sha256"}` ends up in the
bucket under `models/<sha256>` before POST /tasks answers. When the bucket already holds that
key, no URL is fetched. Otherwise the URL is fetched under the URL policy (every redirect hop
checked, the pinned transport refusing fleet endpoints, link-local and metadata addresses),
within MAX_MODEL_BYTES and MODEL_FETCH_TIMEOUT_S, into a temporary file while its sha256 is
computed; only bytes whose sha256 is the one claimed are uploaded under that key, so nothing is
ever stored under a claimed sha256 that it does not have. A refusal raises before anything is
recorded: 422 `model_checksum_mismatch`, `model_fetch_failed`, `url_forbidden`, 413
`model_too_large`, each naming the parameter.

Why before answering: a bad URL or checksum is the client's mistake and gets its answer at once,
with nothing recorded; the first request naming a sha256 waits for the download (later ones
find it in the bucket). Within one ingress replica, requests for a model being fetched wait for
that fetch rather than start another.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from comfy_fleet import errors
from comfy_fleet.log import events
from comfy_fleet.net import fetch
from comfy_fleet.policies import url_policy
from comfy_fleet.workflows import model_files, model_params

#: The content type models are stored with.
CONTENT_TYPE = "application/octet-stream"
#: Where `Services.extra` keeps the replica's fetches under way (sha256 → task).
_INFLIGHT = "model_fetches"


@dataclass
class StagedModels:
    """What a submission records of its models."""

    #: param → the file name the model is pulled under (written into the prompt)
    names: dict[str, str] = field(default_factory=dict)
    #: the task's `models`: [{"param", "sha256", "s3_key", "filename", "folder"}]
    models: list[dict[str, Any]] = field(default_factory=list)
    #: a `task.model_fetched` per model this submission fetched into the bucket
    fetched: list[events.TaskModelFetched] = field(default_factory=list)
    #: the task's `model_files`: [{"param", "folder", "filename"}] of models given by name
    files: list[dict[str, Any]] = field(default_factory=list)
    #: routing labels: the task needs an endpoint that can pull models, and one whose
    #: ComfyUI lists each model file given by name
    labels: list[str] = field(default_factory=list)


def _named(exc: errors.FleetError, param: str) -> errors.FleetError:
    """The same error class (code, status) with the parameter named."""
    more = exc.details if isinstance(exc.details, dict) else {}
    return type(exc)(
        f"params.{param}: {exc.message}", [{"param": param, "problem": exc.message, **more}]
    )


async def stage_models(
    services: Any, workflow: Any, resolved: Mapping[str, Any], *,
    in_bucket: set[str] | None = None,
) -> StagedModels:
    """Put every model given by URL in the bucket (see the module's contract); note each
    model file given by name, which routing sends only where it is (no I/O for those).
    `in_bucket` (a batch's) holds the sha256s already found or fetched for earlier tasks of the
    same request: those are not looked up again, and each sha256 staged here is added to it."""
    files = model_files.of_params(workflow.graph, workflow.manifest.params, resolved)
    staged = StagedModels(files=files, labels=model_files.labels(files))
    wanted = model_params.by_url(workflow.manifest.params, resolved)
    if not wanted:
        return staged
    if services.store is None:
        raise errors.StorageUnavailable("no object store is configured for models")
    policy: url_policy.UrlPolicy = services.url_policy
    for param, value in wanted.items():
        try:
            policy.check_url(value["url"])
        except errors.InvalidRequest as exc:
            raise _named(exc, param) from None
    for param, value in wanted.items():
        sha = value["sha256"]
        key = model_params.model_key(sha)
        if in_bucket is None or sha not in in_bucket:
            fetched = await _ensure(services, key, sha, value["url"], param)
            if fetched is not None:
                staged.fetched.append(fetched)
            if in_bucket is not None:
                in_bucket.add(sha)
        filename = model_params.filename_for(sha, value["url"])
        staged.names[param] = filename
        staged.models.append({
            "param": param, "sha256": sha, "s3_key": key, "filename": filename,
            "folder": workflow.manifest.params[param].folder,
        })
        if model_params.label(sha) not in staged.labels:
            staged.labels.append(model_params.label(sha))
    return staged


async def _ensure(
    services: Any, key: str, sha: str, url: str, param: str
) -> events.TaskModelFetched | None:
    """The model is under `key` when this returns; the fetch's event when this call made it."""
    if await services.store.exists(key):
        return None
    inflight: dict[str, asyncio.Task[Any]] = services.extra.setdefault(_INFLIGHT, {})
    running = inflight.get(sha)
    if running is not None:
        # Another request fetches it now: wait for it, then look again (it may have failed).
        await asyncio.wait([running])
        if await services.store.exists(key):
            return None
    task = asyncio.ensure_future(fetch_into_bucket(services, url, sha, key))
    inflight[sha] = task
    try:
        return await asyncio.shield(task)
    except errors.FleetError as exc:
        if isinstance(exc, errors.InvalidRequest):
            raise _named(exc, param) from None
        raise
    finally:
        if inflight.get(sha) is task and task.done():
            del inflight[sha]


async def fetch_into_bucket(
    services: Any, url: str, sha: str, key: str
) -> events.TaskModelFetched:
    """Fetch `url` into a temporary file, check its sha256, then upload it under `key`."""
    settings = services.settings
    policy: url_policy.UrlPolicy = services.url_policy
    digest = hashlib.sha256()
    size = 0
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(prefix="comfy-fleet-model-") as spool:

        def sink(chunk: bytes) -> None:
            nonlocal size
            digest.update(chunk)
            spool.write(chunk)
            size += len(chunk)

        try:
            async with httpx.AsyncClient(transport=policy.transport()) as client:
                await fetch.stream_limited(
                    client, url, policy, max_bytes=settings.max_model_bytes,
                    timeout_s=settings.model_fetch_timeout_s, sink=sink,
                )
        except errors.PayloadTooLarge as exc:
            raise errors.ModelTooLarge(
                f"{exc.message} (MAX_MODEL_BYTES)", {"limit": settings.max_model_bytes}
            ) from None
        except errors.InputRejected as exc:
            raise errors.ModelFetchFailed(exc.message) from None
        actual = digest.hexdigest()
        if actual != sha:
            raise errors.ModelChecksumMismatch(
                f"{url_policy.url_redacted(url)} has sha256 {actual}, not {sha}",
                {"expected": sha, "actual": actual, "bytes": size},
            )
        spool.flush()
        await services.store.put_file(key, spool.name, CONTENT_TYPE)
    return events.TaskModelFetched(
        sha256=sha, bytes=size, seconds=round(time.monotonic() - started, 3), where="bucket"
    )
