"""The door's middlewares as plain ASGI apps, no server: the principal a key resolves to, and
the body limit's answers."""

from __future__ import annotations

from typing import Any

import orjson

from comfy_fleet.config import Settings
from comfy_fleet.policies import access
from serve_app.middleware import auth, body_limit


class Inner:
    """An ASGI app that reads the whole body, remembers the scope's state, answers 204."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.state = dict(scope.get("state") or {})
        more = True
        while more:
            message = await receive()
            self.body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes] | None = None
) -> tuple[int, dict[str, Any] | None]:
    parts = list(chunks or [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        body = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await app(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, orjson.loads(body) if body else None


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


async def test_an_api_key_is_an_admin_and_a_tenant_key_its_tenant() -> None:
    settings = Settings(
        api_keys=("first-key", "second-key"), tenant_keys=(("acme", "acme-key"), ("beta", "beta-key"))
    )
    for key, expected in [
        ("second-key", access.ADMIN), ("acme-key", access.Principal("acme")),
        ("beta-key", access.Principal("beta")),
    ]:
        inner = Inner()
        status, _ = await call(auth.Authenticate(inner, settings), "/api/v1/tasks", bearer(key))
        assert status == 204 and inner.state is not None
        principal = inner.state["principal"]
        assert principal == expected
        assert key not in repr(principal) and key not in repr(settings)


async def test_tenant_keys_alone_still_require_a_key() -> None:
    inner = Inner()
    app = auth.Authenticate(inner, Settings(tenant_keys=(("acme", "acme-key"),)))
    status, body = await call(app, "/api/v1/tasks", [])
    assert status == 401 and body is not None and body["error"]["code"] == "unauthorized"
    status, _ = await call(app, "/api/v1/tasks", bearer("acme-key"))
    assert status == 204 and inner.state == {"principal": access.Principal("acme")}


async def test_without_keys_configured_everyone_is_the_admin() -> None:
    inner = Inner()
    status, _ = await call(auth.Authenticate(inner, Settings(api_keys=())), "/api/v1/tasks", [])
    assert status == 204 and inner.state == {"principal": access.ADMIN}


async def test_a_wrong_key_is_401_but_open_paths_answer_without_a_principal() -> None:
    inner = Inner()
    app = auth.Authenticate(inner, Settings(api_keys=("k1",)))
    status, body = await call(app, "/api/v1/tasks", bearer("k2"))
    assert status == 401 and body is not None and body["error"]["code"] == "unauthorized"
    assert inner.state is None
    status, _ = await call(app, "/api/v1/healthz", bearer("k2"))
    assert status == 204 and inner.state == {"principal": None}


async def test_the_body_limit_answers_413_for_a_declared_or_a_streamed_excess() -> None:
    settings = Settings(max_body_bytes=1024)
    inner = Inner()
    app = body_limit.BodyLimit(inner, settings)
    status, body = await call(app, "/x", [(b"content-length", b"9" * 40)])
    assert status == 413 and body is not None and body["error"]["code"] == "payload_too_large"
    status, body = await call(app, "/x", [], [b"a" * 600, b"a" * 600])
    assert status == 413 and body is not None and "1024" in body["error"]["message"]
    inner = Inner()
    app = body_limit.BodyLimit(inner, settings)
    status, _ = await call(app, "/x", [], [b"a" * 600, b"a" * 400])
    assert status == 204 and inner.body == b"a" * 1000
