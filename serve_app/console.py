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
from starlette.responses import Response
from starlette.types import Scope

from comfy_fleet.config import Settings

#: Where the page's files are (index.html, *.js, style.css).
STATIC_DIR = Path(__file__).resolve().parent / "console"

#: The console's own URL path.
PREFIX = "/console"

#: Sent with every file of the console. Scripts and styles come only from the console itself;
#: outputs are shown from wherever their presigned URLs point (the S3 endpoint), and the page
#: talks to this service alone. The page may not be framed (clickjacking).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: blob: http: https:; media-src 'self' data: blob: http: https:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (cheap: ETag), so a new version shows at the next reload.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    """StaticFiles with the console's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


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
    app.mount(PREFIX, ConsoleFiles(directory=STATIC_DIR, html=True), name="console")
