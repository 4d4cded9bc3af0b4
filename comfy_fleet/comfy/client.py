"""ComfyClient: the HTTP side of one ComfyUI server (the websocket frames are read by `frames`).

Every method translates transport problems exactly once: a refused or dropped connection, a
timeout or a 5xx is `errors.EndpointUnavailable` (retryable elsewhere; `details["connect"]` is
true when the request surely never reached the server); a 400 from POST /prompt is
`errors.PromptRejected` carrying ComfyUI's error and node_errors as details.

aiohttp rather than httpx: this client is on the hot path of every task (prompt, history,
view, cleanup) and aiohttp costs about half the CPU per request here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from comfy_fleet import errors
from comfy_fleet.config import Endpoint

#: ComfyUI has no auth; it refuses requests whose Origin differs from Host, so we send none.
_HEADERS = {"User-Agent": "comfy-fleet"}
#: The key in a posted prompt's `extra_data` that names the task it runs for. ComfyUI keeps
#: extra_data with the queue item, so a prompt in `/queue` says whose it is, whichever life of
#: the endpoint actor posted it (the `client_id` is fresh for each life).
TASK_KEY = "comfy_fleet_task_id"


class ComfyClient:
    def __init__(self, endpoint: Endpoint, *, timeout_s: float = 30.0) -> None:
        self.endpoint = endpoint
        self._base = endpoint.base_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=5.0)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=_HEADERS,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=32, ttl_dns_cache=300),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self, method: str, path: str, *, timeout_s: float | None = None,
        keep_5xx: bool = False, **kw: Any,
    ) -> tuple[int, bytes]:
        if timeout_s is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=timeout_s, connect=min(5.0, timeout_s))
        try:
            async with self._http().request(method, self._base + path, **kw) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise errors.EndpointUnavailable(
                f"{self.endpoint.name}: {method} {path} timed out", {"timeout": True}
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise errors.EndpointUnavailable(
                f"{self.endpoint.name}: {method} {path} could not connect", {"connect": True}
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise errors.EndpointUnavailable(
                f"{self.endpoint.name}: {method} {path} failed: {type(exc).__name__}",
                {"connect": False},
            ) from exc
        if status >= 500 and not keep_5xx:
            raise errors.EndpointUnavailable(f"{self.endpoint.name}: {method} {path} answered {status}")
        return status, body

    async def _json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        status, body = await self._request(method, path, **kw)
        try:
            return status, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return status, {"error": {"message": body[:500].decode(errors="replace")}}

    async def post_prompt(
        self, prompt: dict[str, Any], prompt_id: str, client_id: str, task_id: str
    ) -> dict[str, Any]:
        """POST /prompt with our minted prompt_id, naming its task (`TASK_KEY`). 200 → the
        reply; 400 → PromptRejected."""
        body = orjson.dumps({
            "prompt": prompt, "prompt_id": prompt_id, "client_id": client_id,
            "extra_data": {TASK_KEY: task_id},
        })
        status, data = await self._json(
            "POST", "/prompt", data=body, headers={"Content-Type": "application/json"}
        )
        if status == 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            message = err.get("message") if isinstance(err, dict) else None
            raise errors.PromptRejected(
                f"ComfyUI rejected the prompt: {message or 'invalid prompt'}",
                {
                    "error": err,
                    "node_errors": data.get("node_errors", {}) if isinstance(data, dict) else {},
                },
            )
        if status != 200:
            raise errors.PromptRejected(
                f"ComfyUI answered {status} to POST /prompt", {"status": status}
            )
        return data if isinstance(data, dict) else {}

    async def history(self, prompt_id: str, *, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The history entry of one prompt, or None when ComfyUI has none (yet)."""
        status, data = await self._json("GET", f"/history/{prompt_id}", timeout_s=timeout_s)
        entry = data.get(prompt_id) if status == 200 and isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    async def queue(self, *, timeout_s: float | None = None) -> tuple[set[str], set[str]]:
        """(running prompt_ids, pending prompt_ids)."""
        _status, data = await self._json("GET", "/queue", timeout_s=timeout_s)
        data = data if isinstance(data, dict) else {}
        running = {str(item[1]) for item in data.get("queue_running", []) if len(item) > 1}
        pending = {str(item[1]) for item in data.get("queue_pending", []) if len(item) > 1}
        return running, pending

    async def queued_tasks(self) -> tuple[set[str], dict[str, str]]:
        """(running prompt_ids, the task of every prompt in the queue, running or pending, that
        names one (`TASK_KEY`): prompt_id → task_id)."""
        _status, data = await self._json("GET", "/queue")
        data = data if isinstance(data, dict) else {}
        running = {str(item[1]) for item in data.get("queue_running", []) if len(item) > 1}
        tasks: dict[str, str] = {}
        for item in [*data.get("queue_running", []), *data.get("queue_pending", [])]:
            extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
            if isinstance(extra.get(TASK_KEY), str):
                tasks[str(item[1])] = extra[TASK_KEY]
        return running, tasks

    async def view(self, filename: str, subfolder: str, type_: str) -> bytes:
        status, body = await self._request(
            "GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type_}
        )
        if status != 200:
            raise errors.EndpointFailure(
                f"{self.endpoint.name}: output {filename!r} could not be fetched "
                f"(GET /view answered {status})",
                {"status": status},
            )
        return body

    async def upload_image(self, data: bytes, filename: str, subfolder: str) -> str:
        """POST /upload/image with overwrite; returns the name to write into the graph."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename, content_type="application/octet-stream")
        form.add_field("overwrite", "true")
        form.add_field("subfolder", subfolder)
        form.add_field("type", "input")
        status, reply = await self._json("POST", "/upload/image", data=form)
        if status != 200 or not isinstance(reply, dict):
            raise errors.EndpointFailure(
                f"{self.endpoint.name}: upload answered {status}", {"status": status}
            )
        name = reply.get("name", filename)
        sub = reply.get("subfolder") or ""
        return f"{sub}/{name}" if sub else str(name)

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/queue", json={"delete": prompt_ids})

    async def interrupt(self, prompt_id: str | None = None) -> None:
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    async def delete_history(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/history", json={"delete": prompt_ids})

    async def object_info(self) -> dict[str, Any]:
        _status, data = await self._json("GET", "/object_info")
        return data if isinstance(data, dict) else {}

    async def system_stats(self) -> dict[str, Any]:
        _status, data = await self._json("GET", "/system_stats")
        return data if isinstance(data, dict) else {}

    async def cleanup_extension_version(self) -> int:
        """The version of our cleanup extension on this server; 0 when it has none."""
        status, data = await self._json("GET", "/comfy-fleet/cleanup/info")
        if status != 200:
            return 0
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, int) and version > 0 else 1

    async def cleanup_delete_many(self, files: list[tuple[str, str, str]]) -> list[int]:
        """Delete (type, subfolder, filename) files in one request (extension version 2);
        returns each file's status (200 deleted, 404 gone, 400 refused)."""
        body = orjson.dumps({"files": [
            {"type": type_, "filename": name, "subfolder": subfolder}
            for type_, subfolder, name in files
        ]})
        status, data = await self._json(
            "POST", "/comfy-fleet/cleanup/delete", data=body,
            headers={"Content-Type": "application/json"},
        )
        results = data.get("results") if status == 200 and isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(files):
            raise errors.EndpointUnavailable(
                f"cleanup batch answered {status} without a result per file", {"status": status}
            )
        statuses = []
        for r in results:
            r = r if isinstance(r, dict) else {}
            statuses.append(200 if r.get("deleted") is True else int(r.get("status") or 400))
        return statuses

    async def cleanup_delete(self, type_: str, filename: str, subfolder: str) -> int:
        """Delete one file through our extension; returns the status (200 deleted, 404 gone)."""
        status, _ = await self._request(
            "POST",
            "/comfy-fleet/cleanup/delete",
            json={"type": type_, "filename": filename, "subfolder": subfolder},
        )
        return status

    async def models_info(self) -> dict[str, Any] | None:
        """Our extension's model route (``GET /comfy-fleet/models/info``); None without it."""
        status, data = await self._json("GET", "/comfy-fleet/models/info")
        return data if status == 200 and isinstance(data, dict) else None

    async def models_held(self) -> list[dict[str, Any]]:
        """The models our extension pulled onto this host (``GET /comfy-fleet/models``)."""
        status, data = await self._json("GET", "/comfy-fleet/models")
        models = data.get("models") if status == 200 and isinstance(data, dict) else None
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    async def pull_model(self, body: dict[str, Any], *, timeout_s: float) -> tuple[int, Any]:
        """``POST /comfy-fleet/models/pull``: (status, answer), error statuses included."""
        status, data = await self._request(
            "POST", "/comfy-fleet/models/pull", timeout_s=timeout_s, keep_5xx=True,
            data=orjson.dumps(body), headers={"Content-Type": "application/json"},
        )
        try:
            return status, orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return status, None
