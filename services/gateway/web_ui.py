"""The analysts' web UI (services/gateway/web/, Svelte + Vite), served at `/` from its build.

`make setup` builds it into services/gateway/web/dist (`npm ci && npm run build`); the image's
Dockerfile does the same in a Node stage. The page, its hashed assets and the icon are the only
paths the guard lets through without a key: they hold no data, and the page asks for a key before
it calls the API. Routing is by URL hash (#/investigations/...), so `/` is the only page.

Every UI answer carries a Content-Security-Policy that allows nothing from outside the gateway:
the UI works offline, and collected text it shows can never load a script or an image from a
URL it names.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

DEFAULT_DIR = Path(__file__).parent / "web" / "dist"
UI_PATHS = frozenset({"/", "/favicon.svg"})
ASSETS_PREFIX = "/assets/"

# 'unsafe-inline' styles: Svelte transitions and cytoscape set style attributes. Scripts only from
# the gateway; audio and images also from data:/blob: URLs the page makes (speech, downloads).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "media-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def is_ui_path(path: str) -> bool:
    return path in UI_PATHS or path.startswith(ASSETS_PREFIX)


class _Assets(StaticFiles):
    """Vite names assets by content hash: a browser may keep them for good."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def ui_routes(web_dir: Path | None) -> list[BaseRoute]:
    """`/`, `/favicon.svg` and `/assets/...` from the UI's build in `web_dir` (None: the default).
    Without a build, `/` answers 503 saying how to make one; the API is unaffected."""
    root = web_dir or DEFAULT_DIR
    index = root / "index.html"

    async def page(request: Request) -> Response:
        if not index.is_file():
            return PlainTextResponse(f"the web UI is not built ({index} is missing): run `make setup`, or "
                                     "`npm ci && npm run build` in services/gateway/web", status_code=503,
                                     headers=SECURITY_HEADERS)
        # no-cache: a new build's page (naming new asset hashes) is picked up at once.
        return FileResponse(index, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def icon(request: Request) -> Response:
        return FileResponse(root / "favicon.svg", headers=SECURITY_HEADERS) if (root / "favicon.svg").is_file() \
            else PlainTextResponse("no icon", status_code=404)

    assets = _Assets(directory=root / "assets", check_dir=False)

    async def serve_assets(scope: Scope, receive: Receive, send: Send) -> None:
        if not (root / "assets").is_dir():
            await PlainTextResponse("the web UI is not built", status_code=404)(scope, receive, send)
            return
        await assets(scope, receive, send)

    return [Route("/", page, methods=["GET", "HEAD"]), Route("/favicon.svg", icon, methods=["GET", "HEAD"]),
            Mount(ASSETS_PREFIX.rstrip("/"), app=serve_assets)]
