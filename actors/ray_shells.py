"""Ray actor shells and ports made from an actor's protocol (`actors/ports.py`).

`shell(...)` is an actor class whose every method forwards to a plain async worker, built
lazily on the first call (or at start, `eager`); `port(name, protocol)` calls a named actor
through the same protocol. A protocol method that is an async generator is a stream: the shell
forwards it as one (Ray streams what it yields) and the port iterates it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import ray

from comfy_fleet import process_heap

NAMESPACE = "comfy-fleet"

log = logging.getLogger("comfy_fleet.remote")

P = TypeVar("P")

# --- calling an actor -------------------------------------------------------------------------


def _methods(protocol: type) -> list[str]:
    """The public methods of an actor's protocol: what its shell and its port offer."""
    return [m for m, f in vars(protocol).items() if callable(f) and not m.startswith("_")]


def _streams(protocol: type) -> frozenset[str]:
    """Its methods that are streams (async generators)."""
    members = vars(protocol)
    return frozenset(m for m in _methods(protocol) if inspect.isasyncgenfunction(members[m]))


class _ActorPort:
    """A named actor through its protocol: `await port.m(*args)` is `await handle.m.remote(*args)`.
    Methods in `fire_and_forget` are sent without waiting for their end (notices whose loss
    the log covers). The handle is looked up on first use (the actor may start later), in a
    thread: that waits for Ray's GCS, and callers are event loops (actors, ingress replicas)."""

    def __init__(
        self, actor_name: str, methods: list[str], fire_and_forget: frozenset[str] = frozenset(),
        streams: frozenset[str] = frozenset(),
    ) -> None:
        self.actor_name = actor_name
        self._methods = frozenset(methods)
        self._fire_and_forget = fire_and_forget
        self._streams = streams
        self._h: Any = None

    async def _handle(self) -> Any:
        if self._h is None:
            self._h = await asyncio.to_thread(ray.get_actor, self.actor_name, namespace=NAMESPACE)
        return self._h

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in self._methods:
            raise AttributeError(f"{self.actor_name}: no method {method!r} in its protocol")
        if method in self._streams:
            return self._stream(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            ref = getattr(await self._handle(), method).remote(*args, **kwargs)
            if method in self._fire_and_forget:
                return None
            return await ref

        return call

    def _stream(self, method: str) -> Callable[..., AsyncIterator[Any]]:
        async def stream(*args: Any) -> AsyncIterator[Any]:
            remote = getattr(await self._handle(), method).options(num_returns="streaming")
            async for ref in remote.remote(*args):
                yield await ref

        return stream


def port(actor_name: str, protocol: type[P], *, fire_and_forget: frozenset[str] = frozenset()) -> P:
    """The named actor, typed on its protocol (`actors/ports.py`)."""
    return cast(P, _ActorPort(actor_name, _methods(protocol), fire_and_forget, _streams(protocol)))


# --- the shells -------------------------------------------------------------------------------


class _Lazy:
    """Builds the worker once, on first use, under a lock."""

    def __init__(self) -> None:
        self._inner: Any = None
        self._lock = asyncio.Lock()
        self._boot: asyncio.Task[None] | None = None

    async def _build(self) -> Any:
        raise NotImplementedError

    async def inner(self) -> Any:
        if self._inner is None:
            async with self._lock:
                if self._inner is None:
                    self._inner = await self._build()
                    process_heap.settle()  # started: what exists now lives for good
        return self._inner

    def build_soon(self) -> None:
        """Build now, not on the first call (from an `async def __init__`, on the actor's
        loop). For actors whose work comes from the log's notifications rather than from
        calls: restarted by Ray after a crash, they must start themselves."""
        self._boot = asyncio.get_running_loop().create_task(self._build_until_built())

    async def _build_until_built(self) -> None:
        delay = 0.5
        while self._inner is None:
            try:
                await self.inner()
            except Exception:
                log.warning(
                    "%s: start failed; retrying in %.1f s", type(self).__name__, delay,
                    exc_info=True,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _forward(name: str) -> Callable[..., Awaitable[Any]]:
    async def forward(self: _Lazy, *args: Any, **kwargs: Any) -> Any:
        return await getattr(await self.inner(), name)(*args, **kwargs)

    forward.__name__ = name
    return forward


def _forward_stream(name: str) -> Callable[..., AsyncIterator[Any]]:
    async def forward(self: _Lazy, *args: Any) -> AsyncIterator[Any]:
        async for item in getattr(await self.inner(), name)(*args):
            yield item

    forward.__name__ = name
    return forward


def shell(
    name: str, protocol: type, build: Callable[..., Awaitable[Any]], *, eager: bool,
    doc: str, extra: dict[str, Any] | None = None,
) -> type:
    """An actor class that only wraps: each method of `protocol` forwards to the worker that
    `build(*constructor args)` makes. `eager`: build at start (from an `async def __init__`)
    rather than on the first call, for actors whose work comes from the log's notices."""
    methods = _methods(protocol)
    streams = _streams(protocol)

    if eager:
        async def __init__(self: _Lazy, *args: Any) -> None:
            _Lazy.__init__(self)
            self._args = args  # type: ignore[attr-defined]
            self.build_soon()
    else:
        def __init__(self: _Lazy, *args: Any) -> None:  # type: ignore[misc]
            _Lazy.__init__(self)
            self._args = args  # type: ignore[attr-defined]

    async def _build(self: _Lazy) -> Any:
        return await build(*self._args)  # type: ignore[attr-defined]

    namespace: dict[str, Any] = {
        "__doc__": doc, "__module__": __name__, "__init__": __init__, "_build": _build,
        **{m: _forward_stream(m) if m in streams else _forward(m) for m in methods},
        **(extra or {}),
    }
    return type(name, (_Lazy,), namespace)
