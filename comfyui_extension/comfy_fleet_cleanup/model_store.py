"""The fetched models of one host on disk: pull one from the bucket, list them, evict to budget.

``ModelStore(host)`` does the I/O; the rules are ``model_rules`` (what is accepted) and
``model_cache`` (what goes). ``Host`` is what the store needs of ComfyUI (or of the stand-in):
its model folders, its queued prompts, a way to say a folder's files changed, and where the
index file lives. A pull writes ``.<random>.part`` beside the target, through directory
descriptors that follow no symlink, hashes while writing, and links the file into place only
when the sha256 matches and the name is free (an existing file is never replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from . import model_cache, model_rules, paths
from .model_rules import ModelError

#: Bytes handed to the writer thread at a time (hashing and writing off the event loop).
WRITE_CHUNK = 4 * 1024 * 1024
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclasses.dataclass(frozen=True)
class Folder:
    """A model folder as ComfyUI knows it: its canonical name, its paths (the first is where
    pulls write), the file extensions its loaders list (empty: any)."""

    name: str
    paths: tuple[str, ...]
    extensions: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Host:
    """What the store needs of the ComfyUI it runs in."""

    #: the model folder named ``folder`` (legacy names mapped), or None when it is not one
    folder: Callable[[str], Folder | None]
    #: the graphs of the prompts queued or running now
    queued_prompts: Callable[[], Iterable[Any]]
    #: called with a folder's canonical name after a file appeared in it or left it
    changed: Callable[[str], None]
    #: the JSON index of fetched models
    index_path: Path


def _folder_or_refuse(host: Host, name: str) -> Folder:
    folder = host.folder(name) if name not in model_rules.NOT_MODEL_FOLDERS else None
    if folder is None or not folder.paths:
        raise ModelError(400, "invalid_folder", "folder is not one of ComfyUI's model folders",
                         {"folder": name})
    return folder


def _regular_size(path: Path) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class ModelStore:
    """The fetched models of one host. One instance per process, used from one event loop."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._lock = asyncio.Lock()  # guards the index file and the reservations
        self._pulling: dict[str, asyncio.Future[None]] = {}  # sha256 -> its pull's end
        self._reserved: dict[str, int] = {}  # pull token -> bytes it is writing

    # -- the index -------------------------------------------------------------------------------
    def _load(self) -> list[model_cache.Entry]:
        """The index, without entries whose file is gone or changed size (forgotten)."""
        try:
            data = json.loads(self.host.index_path.read_text())
        except (OSError, ValueError):
            data = None
        entries = model_cache.from_json(data)
        return [e for e in entries
                if _regular_size(Path(e.base).joinpath(*e.filename.split("/"))) == e.size]

    def _save(self, entries: Iterable[model_cache.Entry]) -> None:
        path = self.host.index_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(model_cache.to_json(entries), indent=1))
        os.replace(tmp, path)

    def list(self) -> list[model_cache.Entry]:
        """The fetched models still on disk."""
        return self._load()

    # -- eviction --------------------------------------------------------------------------------
    def _in_use(self, entries: list[model_cache.Entry], shas: Iterable[str]) -> set[tuple[str, str]]:
        try:
            names = model_cache.names_in_prompts(self.host.queued_prompts())
        except Exception:  # noqa: BLE001 - an unreadable queue must not allow an eviction
            return {e.key for e in entries}
        return model_cache.in_use(entries, names, shas)

    def _evict(self, entries: list[model_cache.Entry], chosen: list[model_cache.Entry]
               ) -> list[model_cache.Entry]:
        """Delete ``chosen`` (only where ComfyUI still has their base folder); the rest."""
        for entry in chosen:
            folder = self.host.folder(entry.folder)
            if folder is not None and entry.base in folder.paths:
                base = Path(entry.base)
                target = base.joinpath(*entry.filename.split("/"))
                with contextlib.suppress(OSError, ValueError):
                    paths.unlink_inside(base, target)
                    paths.prune_empty_parents(base, target)
            self.host.changed(entry.folder)
        gone = {e.key for e in chosen}
        return [e for e in entries if e.key not in gone]

    def _make_room(self, entries: list[model_cache.Entry], config: model_rules.Config,
                   incoming: int, shas: Iterable[str], keep: tuple[str, str] | None = None,
                   ) -> tuple[list[model_cache.Entry], list[model_cache.Entry]]:
        """(entries kept, entries evicted) so that ``incoming`` more bytes fit; ModelError 507
        ``model_cache_full`` when models in use leave too little room."""
        in_use = self._in_use(entries, shas)
        if keep is not None:
            in_use.add(keep)
        now = time.time()
        entries = [model_cache.touched(e, now) if e.key in in_use else e for e in entries]
        try:
            chosen = model_cache.choose_evictions(
                entries, config.cache_bytes, incoming, in_use, sum(self._reserved.values()))
        except model_cache.NoRoom as exc:
            raise ModelError(507, "model_cache_full",
                             "models in use leave too little of the disk budget for this one",
                             exc.details) from None
        kept = self._evict(entries, chosen)
        self._save(kept)  # with the models in use marked as used now
        return kept, chosen

    # -- pulling ---------------------------------------------------------------------------------
    async def pull(self, body: object, config: model_rules.Config) -> dict[str, Any]:
        """Pull a model as a ``POST /comfy-fleet/models/pull`` body asks (see README.md); the
        answer's JSON. Pulls of one sha256 run one after the other, so a second finds the
        first's file in place and fetches nothing. Raises ModelError."""
        if config.bucket is None:
            raise ModelError(503, "not_configured", config.problem or "no bucket configured")
        if not paths.BY_FD:
            raise ModelError(501, "unsupported_platform",
                             "pulling models needs POSIX directory descriptors (Linux, macOS)")
        pull = model_rules.check_pull(
            body, config.bucket, lambda name: _folder_or_refuse(self.host, name).extensions)
        if pull.cache_bytes is not None and pull.cache_bytes < config.cache_bytes:
            config = dataclasses.replace(config, cache_bytes=pull.cache_bytes)
        while (running := self._pulling.get(pull.sha256)) is not None:
            await asyncio.shield(running)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pulling[pull.sha256] = done
        try:
            return await self._pull(pull, config)
        finally:
            del self._pulling[pull.sha256]
            done.set_result(None)

    async def _pull(self, pull: model_rules.Pull, config: model_rules.Config) -> dict[str, Any]:
        folder = _folder_or_refuse(self.host, pull.folder)
        base = Path(folder.paths[0])
        key = (folder.name, pull.filename)
        try:
            target = paths.resolve_inside(base, "", pull.filename)
        except ValueError as exc:
            raise ModelError(400, "invalid_filename", str(exc), {"filename": pull.filename}) from None
        started = time.monotonic()
        async with self._lock:
            entries = self._load()
            mine = next((e for e in entries if e.key == key and e.base == str(base)), None)
            if mine is not None and mine.sha256 == pull.sha256:
                used = model_cache.touched(mine, time.time())
                self._save([used if e is mine else e for e in entries])
                return _answer(used, fetched=False, seconds=0.0, evicted=[])
            if os.path.lexists(target):
                raise ModelError(409, "name_taken", "a different file already has this name",
                                 {"folder": folder.name, "filename": pull.filename})
        token = secrets.token_hex(8)
        try:
            size, evicted = await self._fetch(pull, config, base, token)
            async with self._lock:  # the reservation becomes the entry in one step
                self._reserved.pop(token, None)
                entries = [e for e in self._load() if e.key != key]
                now = time.time()
                entry = model_cache.Entry(pull.sha256, folder.name, pull.filename, str(base),
                                          size, now, now)
                self._save([*entries, entry])
        finally:
            self._reserved.pop(token, None)
        self.host.changed(folder.name)
        return _answer(entry, fetched=True, seconds=time.monotonic() - started, evicted=evicted)

    async def _fetch(self, pull: model_rules.Pull, config: model_rules.Config, base: Path,
                     token: str) -> tuple[int, list[model_cache.Entry]]:
        """Download, verify and link ``pull`` into place; (its size, models evicted for it)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.read_timeout_s,
                                        sock_read=config.read_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http, \
                    http.get(yarl.URL(pull.url, encoded=True), allow_redirects=False) as resp:
                declared = _check_response(resp, config)
                async with self._lock:  # room first, so the disk never holds more than the budget
                    _, evicted = self._make_room(self._load(), config, declared or 0, pull.in_use)
                    self._reserved[token] = declared or 0
                writer = _Writer(base, pull.parts, pull.sha256)
                try:
                    await writer.write_from(resp.content, declared or config.cache_bytes)
                    size = writer.size
                    if declared is None:  # now the size is known: room for it, or nothing placed
                        async with self._lock:
                            _, more = self._make_room(self._load(), config, size, pull.in_use)
                            self._reserved[token] = size
                        evicted += more
                    await asyncio.get_running_loop().run_in_executor(None, writer.place)
                finally:
                    writer.discard()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ModelError(502, "model_fetch_failed", "the model could not be read from the bucket",
                             {"reason": f"{type(exc).__name__}: {exc}"[:500]}) from None
        return size, evicted


def _check_response(resp: aiohttp.ClientResponse, config: model_rules.Config) -> int | None:
    """The declared size of a 200 answer within the budget; ModelError otherwise."""
    if 300 <= resp.status < 400:
        raise ModelError(403, "url_forbidden", "the bucket answered with a redirect, which is refused",
                         {"status": resp.status, "location": resp.headers.get("Location", "")[:2000]})
    if resp.status != 200:
        raise ModelError(502, "model_fetch_failed", "the bucket did not answer 200",
                         {"status": resp.status})
    declared = resp.content_length
    if declared is not None and declared > config.cache_bytes:
        raise ModelError(507, "model_too_large", "the model is larger than the disk budget",
                         {"size": declared, "cache_bytes": config.cache_bytes})
    return declared


class _Writer:
    """A ``.part`` file beside the target, written and hashed off the event loop; ``place``
    links it under the target's name when the sha256 matches; ``discard`` removes what is left."""

    def __init__(self, base: Path, parts: tuple[str, ...], sha256: str) -> None:
        os.makedirs(base, exist_ok=True)  # the operator's folder (ComfyUI lists a missing one as empty)
        self._folder = paths.FolderFd(base, list(parts[:-1]), create=True)
        self._name = parts[-1]
        self._sha256 = sha256
        self._tmp = f".{secrets.token_hex(8)}.part"
        self._hash = hashlib.sha256()
        self.size = 0
        try:
            self._dir = self._folder.__enter__()
        except (OSError, ValueError) as exc:
            raise ModelError(400, "invalid_filename", "filename resolves outside the folder",
                             {"reason": str(exc)}) from None
        try:
            self._fd: int | None = os.open(self._tmp, _TMP_FLAGS, 0o644, dir_fd=self._dir)
        except BaseException:
            self._folder.__exit__(None, None, None)
            raise
        self._written = True

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    async def write_from(self, content: aiohttp.StreamReader, limit: int) -> None:
        loop = asyncio.get_running_loop()
        pending: list[bytes] = []
        buffered = 0
        async for chunk in content.iter_chunked(1024 * 1024):
            self.size += len(chunk)
            if self.size > limit:
                raise ModelError(507, "model_too_large", "the model is larger than the disk budget",
                                 {"size_at_least": self.size, "limit": limit})
            pending.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_CHUNK:
                await loop.run_in_executor(None, self._write, b"".join(pending))
                pending, buffered = [], 0
        if pending:
            await loop.run_in_executor(None, self._write, b"".join(pending))

    def place(self) -> None:
        """Verify, then link into place (never over an existing file); ModelError otherwise."""
        actual = self._hash.hexdigest()
        if actual != self._sha256:
            raise ModelError(422, "model_checksum_mismatch", "the model's sha256 does not match",
                             {"expected": self._sha256, "actual": actual, "size": self.size})
        assert self._fd is not None
        os.fsync(self._fd)
        try:
            os.link(self._tmp, self._name, src_dir_fd=self._dir, dst_dir_fd=self._dir,
                    follow_symlinks=False)
        except FileExistsError:
            raise ModelError(409, "name_taken", "a different file already has this name",
                             {"filename": self._name}) from None
        with contextlib.suppress(OSError):
            os.fsync(self._dir)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._written:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=self._dir)
            self._written = False
        self._folder.__exit__(None, None, None)


def _answer(entry: model_cache.Entry, *, fetched: bool, seconds: float,
            evicted: list[model_cache.Entry]) -> dict[str, Any]:
    return {**entry.public(), "fetched": fetched, "seconds": round(seconds, 3),
            "evicted": [e.public() for e in evicted]}
