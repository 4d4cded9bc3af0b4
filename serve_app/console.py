"""The console: a web page at `/console` (CONTRACT §7.8), static files from `serve_app/console/`.

`mount(app, settings)` adds it to the FastAPI app at the service's root, outside ROUTE_PREFIX:
`/` redirects to `/console/`, `/console/config.json` tells the page where the API is, and the rest
of `/console/` is the files as they are in the repository (no build step). The page and its files
need no key (`is_open`): the page asks the user for one when the API answers 401 and sends it as a
bearer token on its API calls only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from comfy_fleet.config import Settings

#: Where the page's files are (index.html, *.js, style.css).
STATIC_DIR = Path(__file__).resolve().parent / "console"

#: The console's own URL path.
PREFIX = "/console"


def is_open(path: str) -> bool:
    """Whether a request path belongs to the console (or is the root redirect): no key needed.
    Nothing under it reads or changes the fleet; the page's API calls carry the user's key."""
    return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve the console on `app`: `/` and `/console` redirect to `/console/`."""

    async def to_console() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)

    async def config() -> JSONResponse:
        # Read by app.js at start: the API's base path (ROUTE_PREFIX), so the files stay static.
        return JSONResponse({"api": settings.route_prefix}, headers={"Cache-Control": "no-store"})

    app.add_api_route("/", to_console, methods=["GET"], include_in_schema=False)
    app.add_api_route(PREFIX, to_console, methods=["GET"], include_in_schema=False)
    app.add_api_route(PREFIX + "/config.json", config, methods=["GET"], include_in_schema=False)
    app.mount(PREFIX, StaticFiles(directory=STATIC_DIR, html=True), name="console")
