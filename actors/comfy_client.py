"""ComfyClient: the HTTP side of one ComfyUI server (the websocket lives in the endpoint actor).

Every method translates transport problems exactly once: a refused or dropped connection, a
timeout or a 5xx is `errors.EndpointUnavailable` (retryable elsewhere); a 400 from POST /prompt is
`errors.PromptRejected` carrying ComfyUI's error and node_errors as details.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from core import errors
from core.config import Endpoint

#: ComfyUI has no auth; it refuses requests whose Origin differs from Host, so we send none.
_HEADERS = {"user-agent": "comfy-fleet"}


class ComfyClient:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._http = httpx.AsyncClient(
            base_url=endpoint.base_url,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            headers=_HEADERS,
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise errors.EndpointUnavailable(
                f"{self.endpoint.name}: {method} {path} timed out", {"timeout": True}
            ) from exc
        except httpx.TransportError as exc:
            raise errors.EndpointUnavailable(
                f"{self.endpoint.name}: {method} {path} failed: {type(exc).__name__}",
                {"connect": isinstance(exc, httpx.ConnectError)},
            ) from exc
        if resp.status_code >= 500:
            raise errors.EndpointUnavailable(
                f"{self.endpoint.name}: {method} {path} answered {resp.status_code}"
            )
        return resp

    async def post_prompt(
        self, prompt: dict[str, Any], prompt_id: str, client_id: str
    ) -> dict[str, Any]:
        """POST /prompt with our minted prompt_id. 200 → the reply; 400 → PromptRejected."""
        body = orjson.dumps({"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id})
        resp = await self._request(
            "POST", "/prompt", content=body, headers={"content-type": "application/json"}
        )
        if resp.status_code == 400:
            data = _json_or_text(resp)
            err = data.get("error", {}) if isinstance(data, dict) else {}
            message = err.get("message") if isinstance(err, dict) else None
            raise errors.PromptRejected(
                f"ComfyUI rejected the prompt: {message or resp.text[:200]}",
                {
                    "error": err,
                    "node_errors": data.get("node_errors", {}) if isinstance(data, dict) else {},
                },
            )
        if resp.status_code != 200:
            raise errors.PromptRejected(
                f"ComfyUI answered {resp.status_code} to POST /prompt", {"status": resp.status_code}
            )
        return resp.json()  # type: ignore[no-any-return]

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of one prompt, or None when ComfyUI has none (yet)."""
        resp = await self._request("GET", f"/history/{prompt_id}")
        data = resp.json() if resp.status_code == 200 else {}
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    async def queue(self) -> tuple[set[str], set[str]]:
        """(running prompt_ids, pending prompt_ids)."""
        resp = await self._request("GET", "/queue")
        data = resp.json()
        running = {str(item[1]) for item in data.get("queue_running", []) if len(item) > 1}
        pending = {str(item[1]) for item in data.get("queue_pending", []) if len(item) > 1}
        return running, pending

    async def view(self, filename: str, subfolder: str, type_: str) -> bytes:
        resp = await self._request(
            "GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type_}
        )
        if resp.status_code != 200:
            raise errors.EndpointFailure(
                f"{self.endpoint.name}: output {filename!r} could not be fetched "
                f"(GET /view answered {resp.status_code})",
                {"status": resp.status_code},
            )
        return resp.content

    async def upload_image(self, data: bytes, filename: str, subfolder: str) -> str:
        """POST /upload/image with overwrite; returns the name to write into the graph."""
        resp = await self._request(
            "POST",
            "/upload/image",
            files={"image": (filename, data, "application/octet-stream")},
            data={"overwrite": "true", "subfolder": subfolder, "type": "input"},
        )
        if resp.status_code != 200:
            raise errors.EndpointFailure(
                f"{self.endpoint.name}: upload answered {resp.status_code}", {"status": resp.status_code}
            )
        reply = resp.json()
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
        resp = await self._request("GET", "/object_info")
        return resp.json()  # type: ignore[no-any-return]

    async def system_stats(self) -> dict[str, Any]:
        resp = await self._request("GET", "/system_stats")
        return resp.json()  # type: ignore[no-any-return]

    async def has_cleanup_extension(self) -> bool:
        resp = await self._request("GET", "/comfy-fleet/cleanup/info")
        return resp.status_code == 200

    async def cleanup_delete(self, type_: str, filename: str, subfolder: str) -> int:
        """Delete one file through our extension; returns the status (200 deleted, 404 gone)."""
        resp = await self._request(
            "POST",
            "/comfy-fleet/cleanup/delete",
            json={"type": type_, "filename": filename, "subfolder": subfolder},
        )
        return resp.status_code


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return {"error": {"message": resp.text[:500]}}
