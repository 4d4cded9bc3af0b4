"""HostJanitor: deletes what ended tasks leave on a ComfyUI host (their inputs in S3 are kept).

On the host: the task's uploaded inputs and its output files (through the comfy-fleet cleanup
extension, when the host has it) and its history entry. Files and history entries of the tasks
ending within HISTORY_TRASH_S go in a request or two: on a busy endpoint a batch holds many
tasks (at 0.5 s an endpoint finishing two tasks a second sent two cleanup requests per task,
on both hosts). Cleanup is best effort: a failure is logged and reported, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from comfy_fleet import errors
from comfy_fleet.comfy import history
from comfy_fleet.comfy.client import ComfyClient
from comfy_fleet import storage

log = logging.getLogger("comfy_fleet.endpoint")

#: History entries and files of finished prompts are deleted from ComfyUI in batches, this often.
HISTORY_TRASH_S = 2.0
#: Files named in one cleanup request (the extension takes up to 1000).
CLEANUP_BATCH = 500

#: (type, subfolder, filename) of a file on the host
HostFile = tuple[str, str, str]


@dataclass(frozen=True)
class Emptied:
    """One run of the trash: what was asked to be deleted, and how many files failed."""

    files: int
    files_failed: int
    entries: int
    entries_failed: bool


def input_file(spec: dict[str, Any]) -> HostFile:
    subfolder, _, name = str(spec["filename"]).rpartition("/")
    return ("input", subfolder, name)


class HostJanitor:
    def __init__(
        self, name: str, client: ComfyClient, store: storage.BlobStore, *,
        trash_every_s: float = HISTORY_TRASH_S,
    ) -> None:
        self.name = name
        self.client = client
        self.store = store
        self.trash_every_s = trash_every_s
        #: the cleanup extension's version (2 and up delete a batch of files in one request);
        #: 0 without it
        self.version = 0
        #: None until the host was asked
        self.has_extension: bool | None = None
        self.history_trash: list[str] = []
        #: files to delete through the extension with the next trash run
        self.file_trash: list[HostFile] = []
        self._bg: set[asyncio.Task[Any]] = set()

    async def probe(self) -> None:
        """Ask the host once whether it has our cleanup extension (and which version)."""
        if self.has_extension is not None:
            return
        self.version = await self.client.cleanup_extension_version()
        self.has_extension = self.version > 0
        if not self.has_extension:
            log.warning(
                "endpoint %s has no comfy-fleet cleanup extension: its files are left alone",
                self.name,
            )

    def close(self) -> None:
        for task in list(self._bg):
            task.cancel()

    async def after_end(
        self, prompt_id: str, inputs: list[dict[str, Any]], entry: dict[str, Any] | None
    ) -> int:
        """A task ended: delete its inputs and outputs on the host (its inputs in S3 are kept:
        they are the task's record); its history entry (and, with extension version 2, its
        files) go with the next trash run. Runs after the end is recorded, so it never delays
        the end or its webhook. Returns the number of host files deleted or put in the trash."""
        files: list[HostFile] = []
        try:
            if self.has_extension is None:
                # Ended before the host was asked (the ask follows each connect, after the
                # node info): ask now, or its files would be left on the host for good.
                await self.probe()
            if self.has_extension:
                if entry is None:
                    entry = await self.client.history(prompt_id)
                files = history.all_files((entry or {}).get("outputs"))
                files.extend(input_file(spec) for spec in inputs)
                if self.version >= 2:
                    self.file_trash.extend(files)
                else:
                    for type_, subfolder, name in files:
                        await self.client.cleanup_delete(type_, name, subfolder)
        except Exception:
            log.info("endpoint %s: cleanup of %s incomplete", self.name, prompt_id, exc_info=True)
        # A task's inputs in S3 stay: they are its record, and a rerun runs from them. Only the
        # staged copy of a task recorded before inputs were kept (no sha256) is deleted.
        for spec in inputs:
            if "sha256" not in spec:
                with contextlib.suppress(Exception):
                    await self.store.delete(spec["s3_key"])
        self.history_trash.append(prompt_id)
        if len(self.history_trash) == 1:
            task = asyncio.create_task(self._empty_later())
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
        return len(files)

    async def remove_uploads(self, inputs: list[dict[str, Any]]) -> int:
        """Delete the input files a task uploaded to this host (not their staged S3 copies);
        returns how many were deleted."""
        if not self.has_extension:
            return 0
        deleted = 0
        for spec in inputs:
            type_, subfolder, name = input_file(spec)
            with contextlib.suppress(Exception):
                await self.client.cleanup_delete(type_, name, subfolder)
                deleted += 1
        return deleted

    async def _empty_later(self) -> Emptied:
        await asyncio.sleep(self.trash_every_s)
        return await self.empty_trash()

    async def empty_trash(self) -> Emptied:
        """The files and history entries in the trash, in a request or two (files first: a
        file must not outlive the entry naming it unseen). Nothing is carried over: a failed
        batch is left to the host (a restarted ComfyUI has no history left anyway)."""
        batch, self.history_trash = self.history_trash, []
        files, self.file_trash = self.file_trash, []
        failed = 0
        for start in range(0, len(files), CLEANUP_BATCH):
            chunk = files[start:start + CLEANUP_BATCH]
            try:
                await self.client.cleanup_delete_many(chunk)
            except errors.EndpointUnavailable:
                failed += len(chunk)
                log.info("endpoint %s: cleanup of %d file(s) incomplete", self.name, len(chunk))
        entries_failed = False
        try:
            await self.client.delete_history(batch)
        except errors.EndpointUnavailable:
            entries_failed = True
        return Emptied(len(files), failed, len(batch), entries_failed)
