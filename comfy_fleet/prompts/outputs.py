"""OutputStorer: a finished prompt's files, from ComfyUI's /view into the blob store.

It returns what it stored and what it could not; recording them is the caller's (see
`decisions.stored`). When ComfyUI does not answer (down, timing out, 5xx) and tries remain,
it raises `errors.EndpointUnavailable`: no verdict on the task yet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_fleet import errors, hop_trace
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet.comfy.history import OutputFile
from comfy_fleet.log import events
from comfy_fleet import storage

#: Tries to fetch a finished prompt's outputs while ComfyUI does not answer /view (down, timing
#: out, 5xx) before the task fails with output_fetch_failed; between tries the prompt goes back
#: to the reconciler, which finds it again in /history or, after a restart, runs it again.
OUTPUT_FETCH_TRIES = 5


@dataclass
class Stored:
    outputs: list[events.TaskOutputStored] = field(default_factory=list)
    #: one dict per output not stored: code, message, filename (and what the re-upload needs)
    failures: list[dict[str, Any]] = field(default_factory=list)


class OutputStorer:
    def __init__(
        self, client: ComfyClient, store: storage.BlobStore, *, fallback_dir: Path | str,
        fetch_tries: int = OUTPUT_FETCH_TRIES,
    ) -> None:
        self.client = client
        self.store = store
        self.fallback_dir = Path(fallback_dir)
        self.fetch_tries = fetch_tries

    async def store_all(
        self, task_id: str, prompt_id: str, files: list[OutputFile], *, fetch_failures: int
    ) -> Stored:
        """Fetch every output and store it. `fetch_failures`: earlier tries ComfyUI did not
        answer; the last allowed try turns a silent ComfyUI into output_fetch_failed."""
        last_try = fetch_failures + 1 >= self.fetch_tries
        results = await asyncio.gather(
            *(self._store_one(task_id, prompt_id, i, f, last_try) for i, f in enumerate(files)),
            return_exceptions=True,
        )
        away = next((r for r in results if isinstance(r, BaseException)), None)
        if away is not None:
            # ComfyUI did not answer (a blip, or a restart between /history and /view).
            raise away
        return Stored(
            outputs=[r for r in results if isinstance(r, events.TaskOutputStored)],
            failures=[r for r in results if isinstance(r, dict)],
        )

    async def _store_one(
        self, task_id: str, prompt_id: str, index: int, f: OutputFile, last_try: bool
    ) -> events.TaskOutputStored | dict[str, Any]:
        try:
            key = storage.output_key(task_id, index, f.filename)
        except errors.FleetError as exc:
            return {"code": "unsafe_output_name", "message": exc.message, "filename": f.filename[:200]}
        try:
            data = await self.client.view(f.filename, f.subfolder, f.type)
            hop_trace.mark("endpoint.fetched", task_id)
        except errors.EndpointUnavailable as exc:
            if not last_try:
                raise
            return {"code": "output_fetch_failed", "message": exc.message, "filename": f.filename}
        except errors.FleetError as exc:  # it answered, without the file
            return {"code": "output_fetch_failed", "message": exc.message, "filename": f.filename}
        content_type = storage.content_type_for(f.filename, data[:64])
        digest = storage.sha256_hex(data)
        try:
            await self.store.put(key, data, content_type)
        except errors.StorageUnavailable as exc:
            # Never lost: keep the bytes on disk (written off the event loop: an output can be
            # large); the task fails with storage_failed and the re-upload command completes it
            # when S3 answers again.
            kept = await asyncio.to_thread(self._keep_locally, key, data)
            return {
                "code": "storage_failed", "message": exc.message, "filename": f.filename,
                "fallback_path": kept, "s3_key": key,
                "node_id": f.node_id, "index": index, "subfolder": f.subfolder, "kind": f.kind,
                "content_type": content_type, "size": len(data), "sha256": digest,
            }
        return events.TaskOutputStored(
            prompt_id=prompt_id, index=index, node_id=f.node_id, filename=f.filename,
            subfolder=f.subfolder, kind=f.kind, content_type=content_type, size=len(data),
            sha256=digest, s3_key=key,
        )

    def _keep_locally(self, key: str, data: bytes) -> str:
        path = self.fallback_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)
