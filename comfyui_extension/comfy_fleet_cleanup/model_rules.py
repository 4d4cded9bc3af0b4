"""What the model routes accept: their configuration, a pull's body, and the bucket URL rule.

Pure (no I/O, no ComfyUI imports), so the stand-in serves the same rules and tests need no
server. Every refusal is a ``ModelError`` carrying the HTTP status and the error body's
``code``, ``message`` and ``details``.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from . import paths

#: The environment variables the extension reads (at each request, so a change needs no restart
#: of the route, only of the process that holds the environment).
ENV_BUCKET_URL = "COMFY_FLEET_MODEL_BUCKET_URL"
ENV_CACHE_BYTES = "COMFY_FLEET_MODEL_CACHE_BYTES"
ENV_READ_TIMEOUT_S = "COMFY_FLEET_MODEL_READ_TIMEOUT_S"

DEFAULT_CACHE_BYTES = 50 * 1024**3
DEFAULT_READ_TIMEOUT_S = 60.0
#: Folders ComfyUI knows that hold no models: a file there would be code or config it runs.
NOT_MODEL_FOLDERS = frozenset({"custom_nodes"})

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Percent-escapes that decode to a path separator or a dot: a server decoding them could walk
# out of the prefix that the undecoded path seemed to stay in.
_ESCAPED_PATH_CHARS = re.compile(r"%(2[eEfF]|5[cC])")


class ModelError(Exception):
    """A refusal: ``status``, ``code``, ``message``, ``details`` (kept in ``args``)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(status, code, message, details or {})

    @property
    def status(self) -> int:
        return int(self.args[0])

    def body(self) -> dict[str, Any]:
        """The JSON answer: ``{"error": {"code", "message", "details"}}``."""
        _, code, message, details = self.args
        return {"error": {"code": code, "message": message, "details": details}}


def bad_request(message: str, **details: Any) -> ModelError:
    return ModelError(400, "bad_request", message, details)


@dataclasses.dataclass(frozen=True)
class Bucket:
    """The one place models may come from: ``scheme://host[:port]`` and a path prefix."""

    scheme: str
    host: str
    port: int
    path: str  # no trailing slash; "" for a whole host (virtual-hosted buckets)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclasses.dataclass(frozen=True)
class Config:
    """The model routes' settings. ``bucket`` None: not configured (pulls answer 503)."""

    bucket: Bucket | None
    cache_bytes: int = DEFAULT_CACHE_BYTES
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    #: why the configuration is unusable, when it is (shown by the info route and in 503s)
    problem: str | None = None


def parse_bucket(text: str) -> Bucket:
    """``scheme://host[:port][/prefix]`` as a Bucket; ValueError naming the problem."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{ENV_BUCKET_URL} must be http(s)://host[:port]/bucket, got {text!r}")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError(f"{ENV_BUCKET_URL} must have no user, query or fragment")
    path = parts.path.rstrip("/")
    if ".." in path.split("/") or _ESCAPED_PATH_CHARS.search(path):
        raise ValueError(f"{ENV_BUCKET_URL} must have a plain path")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"{ENV_BUCKET_URL} has a bad port: {exc}") from exc
    return Bucket(parts.scheme, parts.hostname.lower(), port, path)


def config_from_env(env: Mapping[str, str]) -> Config:
    """The Config the environment gives; a bad value leaves the routes unconfigured, with the
    reason in ``problem`` (ComfyUI keeps running: the service sees ``configured: false``)."""
    try:
        text = env.get(ENV_BUCKET_URL, "").strip()
        bucket = parse_bucket(text) if text else None
        cache_bytes = int(env.get(ENV_CACHE_BYTES, "") or DEFAULT_CACHE_BYTES)
        if cache_bytes <= 0:
            raise ValueError(f"{ENV_CACHE_BYTES} must be a positive number of bytes")
        timeout = float(env.get(ENV_READ_TIMEOUT_S, "") or DEFAULT_READ_TIMEOUT_S)
        if not timeout > 0:
            raise ValueError(f"{ENV_READ_TIMEOUT_S} must be a positive number of seconds")
    except ValueError as exc:
        return Config(None, problem=str(exc))
    problem = None if bucket else f"{ENV_BUCKET_URL} is not set"
    return Config(bucket, cache_bytes, timeout, problem)


def check_url(bucket: Bucket, url: object) -> str:
    """``url`` when it names an object under ``bucket`` (same scheme, host and port, path under
    the prefix, no user info or fragment, no ``..`` or escaped ``/`` ``\\`` ``.`` in the path);
    else ModelError 403 ``url_forbidden``. The URL is later sent exactly as given."""
    if not isinstance(url, str) or not url:
        raise bad_request("url must be a non-empty string")
    forbidden = ModelError(403, "url_forbidden", "url is not an object of the configured bucket",
                           {"url": url[:2000], "bucket": bucket.url})
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise forbidden
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, -1)
    except ValueError:
        raise forbidden from None
    if (
        parts.scheme != bucket.scheme
        or (parts.hostname or "").lower() != bucket.host
        or port != bucket.port
        or parts.username is not None
        or parts.password is not None
        or parts.fragment
        or "#" in url
        or not parts.path.startswith(bucket.path + "/")
        or parts.path == bucket.path + "/"
        or ".." in parts.path.split("/")
        or "\\" in parts.path
        or _ESCAPED_PATH_CHARS.search(parts.path)
    ):
        raise forbidden
    return url


@dataclasses.dataclass(frozen=True)
class Pull:
    """A checked ``POST /comfy-fleet/models/pull`` body."""

    url: str
    sha256: str
    folder: str
    filename: str  # "/"-separated, relative to the folder, as ComfyUI's loaders list it
    parts: tuple[str, ...]  # filename split into folders and the file's name
    in_use: frozenset[str]  # sha256s the caller says queued or running prompts use
    cache_bytes: int | None  # the caller's disk budget (the host's caps it)


def check_sha256(value: object, label: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise bad_request(f"{label} must be 64 lower-case hex digits")
    return value


def check_filename(filename: object, extensions: frozenset[str] | None) -> tuple[str, ...]:
    """The parts of a model's name inside its folder; ModelError 400 ``invalid_filename``.

    Refused, besides what ``paths`` refuses (absolute, ``..``, control characters): a part
    starting with ``.`` (hidden, and where the extension keeps its own files), and a name
    whose extension ComfyUI does not list for the folder (``extensions``; None or empty: any).
    """
    if not isinstance(filename, str) or not filename:
        raise ModelError(400, "invalid_filename", "filename must be a non-empty string")
    try:
        parts = paths.check_parts("filename", filename)
    except ValueError as exc:
        raise ModelError(400, "invalid_filename", str(exc), {"filename": filename}) from None
    if not parts:
        raise ModelError(400, "invalid_filename", "filename names the folder itself",
                         {"filename": filename})
    if any(p.startswith(".") for p in parts):
        raise ModelError(400, "invalid_filename", "filename has a part starting with '.'",
                         {"filename": filename})
    if extensions:
        suffix = "." + parts[-1].rpartition(".")[2].lower() if "." in parts[-1] else ""
        if suffix not in extensions:
            raise ModelError(400, "invalid_filename",
                             "ComfyUI does not list files with this extension in the folder",
                             {"filename": filename, "extensions": sorted(extensions)})
    return tuple(parts)


def check_pull(body: object, bucket: Bucket, extensions_of: Any) -> Pull:
    """A pull body checked; ``extensions_of(folder)`` is the folder's listed extensions, or
    raises ModelError when the folder is not a model folder."""
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    unknown = set(body) - {"url", "sha256", "folder", "filename", "in_use", "cache_bytes"}
    if unknown:
        raise bad_request("unknown fields", fields=sorted(unknown))
    sha = check_sha256(body.get("sha256"))
    folder = body.get("folder")
    if not isinstance(folder, str) or not folder:
        raise ModelError(400, "invalid_folder", "folder must be a non-empty string")
    parts = check_filename(body.get("filename"), extensions_of(folder))
    in_use = body.get("in_use", [])
    if not isinstance(in_use, list):
        raise bad_request("in_use must be a list of sha256s")
    shas = frozenset(check_sha256(s, "each in_use entry") for s in in_use)
    cache_bytes = body.get("cache_bytes")
    if cache_bytes is not None and (
        not isinstance(cache_bytes, int) or isinstance(cache_bytes, bool) or cache_bytes <= 0
    ):
        raise bad_request("cache_bytes must be a positive integer")
    url = check_url(bucket, body.get("url"))
    return Pull(url, sha, folder, "/".join(parts), parts, shas, cache_bytes)
