"""The analysts' HTTP API. Every route is a typed RPC over NATS to the service that owns the work;
routes live in services/gateway/routes/, one module per domain.

No input yields a 5xx: bodies are size-limited (413); text no service can take (NUL, lone
surrogates) and numbers no service can hold (NaN, Infinity, 1e309, integers beyond 64 bits) are
refused before any route reads them (400, services/gateway/inputs.py); every body model is strict
and every integer bounded (422 with each invalid value; OpenAI's 400 and error shape under /v1/).
Every status a route can answer is declared in the OpenAPI schema (tests/test_gateway_fuzz.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from nats.aio.client import Client as NatsClient
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from bev.rpc import RpcError
from bev.telemetry import get_logger
from services.gateway.clients import Clients
from services.gateway.deps import SCOPE_HEADER
from services.gateway.guard import OPEN_PATHS, Guard
from services.gateway.http_metrics import HttpMetrics
from services.gateway.inputs import RequestChecks
from services.gateway.limits import RateLimited
from services.gateway.mcp_tools import MCP_PATH, mcp_endpoint
from services.gateway.routes import (
    access,
    avatar,
    collectors,
    embeddings,
    fleet,
    monitoring,
    openai,
    reasoning,
    swarm,
)
from services.gateway.routes.common import (
    COMMON_ERRORS,
    ERROR_SCHEMA,
    HTTP_STATUS,
    OPENAI_ERROR_SCHEMA,
    OPENAI_PREFIX,
    error_response,
)
from services.gateway.settings import GatewayConfig
from services.gateway.web_ui import ui_routes

log = get_logger(__name__)

# The route modules, in the order their routes are tried (the route index keeps that order).
ROUTE_MODULES = (fleet, reasoning, openai, embeddings, collectors, swarm, avatar, monitoring, access)


def create_app(nc: NatsClient, config: GatewayConfig, callees: Iterable[str], guard: Guard) -> FastAPI:
    """The HTTP API over `nc`, behind `guard` (keys, limits, audit); `callees` are the services the
    gateway's manifest entry calls."""
    # No trailing-slash redirects: `/api/v1/documents/` (an empty id) is 404, not a redirect to the
    # collection path and then a 405 for the method.
    clients = Clients.over_nats(nc, config.rpc_timeout_s, callees)
    mcp = mcp_endpoint(clients)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with mcp.running():  # the MCP SDK's session manager serves /mcp from its task group
            yield

    # FastAPI's own OpenTelemetry off: the guard opens each request's server span and HttpMetrics
    # counts it; FastAPI's would be a second span, histogram and log record for every request.
    app = FastAPI(title="BEV gateway", version="0.1.0", redirect_slashes=False,
                  description=API_DESCRIPTION, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    # What routes depend on (services/gateway/deps.py).
    app.state.clients = clients
    app.state.guard = guard
    routes: list[APIRoute] = []
    for module in ROUTE_MODULES:
        own = [route for route in module.router.routes if isinstance(route, APIRoute)]
        _document_scopes(own)
        _document_errors(own)
        routes += own
        # The module's routes straight onto the app's router rather than include_router, which
        # keeps each module as one more level the router searches route by route.
        app.router.routes.extend(module.router.routes)
    guard.routes = routes
    index = RouteIndex(routes)
    index.serve(app.router)
    # MCP over streamable HTTP (services/gateway/mcp_tools.py), behind the guard like every route;
    # each tool checks the scope it needs. Not in the OpenAPI schema: it is JSON-RPC, not REST.
    app.router.routes.append(Route(MCP_PATH, mcp.app, methods=["GET", "POST", "DELETE"]))
    guard.mounted = frozenset({MCP_PATH})
    app.router.routes.extend(ui_routes(config.web_dir))  # the web UI at / (services/gateway/web_ui.py)

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> Response:
        return error_response(request.url.path, 429, str(exc), headers=exc.headers)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_unavailable(request: Request, exc: Exception) -> Response:
        # The key and audit routes' database: its cause in one line, not a traceback.
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return error_response(request.url.path, 503, f"the gateway's database cannot answer: {cause}",
                              headers={"Retry-After": "5"})

    @app.exception_handler(RpcError)
    async def rpc_error(request: Request, exc: RpcError) -> Response:
        return error_response(request.url.path, HTTP_STATUS.get(exc.code, 502), exc.message, code=exc.code.name)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        # Starlette's too (404 for an unknown path, 405 with its Allow header), not only the routes'.
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:  # every method the path takes, not only the first route's
            path = request.scope["path"]
            methods = {m for route in routes if route.path_regex.match(path) for m in route.methods or ()}
            headers = {**(headers or {}), "Allow": ", ".join(sorted(methods))}
        return error_response(request.url.path, exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return _validation_error(request.url.path, exc.errors())

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # A bug: logged with its traceback, answered in the API's error shape (uvicorn logs it too).
        log.exception("unhandled error in a route", path=request.url.path, error=repr(exc))
        return error_response(request.url.path, 500, f"internal error ({type(exc).__name__})", code="INTERNAL")

    app.openapi = lambda: _openapi_with_security(app)  # type: ignore[method-assign]
    # Inside the guard: the body limit (413), then what no service can take (400). /mcp carries
    # documents too (document_intelligence), base64 in JSON: the upload limit.
    app.add_middleware(RequestChecks, route_for=index.route_for, max_body_bytes=config.max_body_bytes,
                       max_upload_bytes=config.max_upload_bytes,
                       upload_paths=(*embeddings.UPLOAD_PATHS, collectors.FILES_PATH, MCP_PATH))
    # Added late, so it runs early: no key, no answer (only /healthz is open).
    app.add_middleware(_GuardMiddleware, guard=guard)
    # Added last, so it runs first: every answer is counted, the guard's refusals too.
    app.add_middleware(HttpMetrics, routes=[*routes, *(r for r in app.router.routes if hasattr(r, "path"))])
    return app


API_DESCRIPTION = """Every route but `/healthz` needs an API key: `Authorization: Bearer bev_<id>_<secret>`
(401 without a valid one; 403 when the key lacks the route's scope, named in each operation's
`x-bev-scope`). Keys belong to a team: another team's investigations, workflows and documents
answer 404, and nothing above the key's TLP is returned. Each key has an hourly request budget and
a daily LLM token budget (429 with `Retry-After`; every answer carries `RateLimit-*` headers).
The embedded fleet's admin key is `api_key` in `run/fleet.json`; `bev keys create` makes others."""


class _GuardMiddleware:
    """Starlette's middleware shape around Guard.middleware."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self._app = guard.middleware(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def _document_scopes(routes: Iterable[APIRoute]) -> None:
    """Write each route's required scope (its deps.needs dependency) into its OpenAPI operation."""
    for route in routes:
        scopes = [getattr(dep.dependency, "bev_scope", None) for dep in route.dependencies]
        scope = next((s for s in scopes if s), None)
        if scope is None and route.path not in OPEN_PATHS:
            raise ValueError(f"route {sorted(route.methods or ())} {route.path} declares no scope "
                             "(dependencies=[READ], [WRITE] or [ADMIN] from services/gateway/deps.py)")
        if scope is not None:
            route.openapi_extra = {**(route.openapi_extra or {}), SCOPE_HEADER: scope}


def _openapi_with_security(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the bearer-key scheme, required on every operation but /healthz's."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http", "scheme": "bearer", "bearerFormat": "bev_<id>_<secret>",
        "description": "An API key from `bev keys create` or POST /api/v1/keys"}
    schema["security"] = [{"apiKey": []}]
    for path in OPEN_PATHS:
        for operation in schema.get("paths", {}).get(path, {}).values():
            operation["security"] = []
    app.openapi_schema = schema
    return schema


def _document_errors(routes: Iterable[APIRoute]) -> None:
    """Declare in the OpenAPI schema the errors every route can answer (COMMON_ERRORS) next to the
    ones the route declares itself, each with the body of its shape (the OpenAI one under /v1/)."""
    for route in routes:
        responses: dict[int | str, dict[str, Any]] = {status: dict(response) for status, response in route.responses.items()}
        for status, description in COMMON_ERRORS.items():
            responses.setdefault(status, {"description": description})
        if "{" in route.path:  # an id in the path: the service answers NOT_FOUND for an unknown one
            responses.setdefault(404, {"description": "Nothing by that id"})
        if route.path in embeddings.UPLOAD_PATHS and "POST" in (route.methods or ()):
            responses.setdefault(415, {"description": "A file type the corpus does not read"})
        schema = OPENAI_ERROR_SCHEMA if route.path.startswith(OPENAI_PREFIX) else ERROR_SCHEMA
        for code, response in responses.items():
            if int(code) >= 400 and "model" not in response:
                response.setdefault("content", {"application/json": {"schema": schema}})
        route.responses = responses


class RouteIndex:
    """Which API route a request reaches, in one regex match per request: every route's path
    pattern, for each method, joined into one alternation in the routes' order (the first that
    matches wins, as in the router), each alternative a named group. FastAPI's router tries the
    ~45 routes one by one with `route.matches`, hundreds of µs a request under the profiler
    (docs/decisions/0015-http-edge.md); this is one match and a few µs."""

    def __init__(self, routes: Sequence[APIRoute]) -> None:
        self._routes = list(routes)
        by_method: dict[str, list[str]] = {}
        for n, route in enumerate(self._routes):
            # Starlette's pattern, anchored, its parameters' groups made non-capturing: the one
            # group that matched then names the route.
            pattern = re.sub(r"\(\?P<\w+>", "(?:", route.path_regex.pattern.removeprefix("^").removesuffix("$"))
            for method in route.methods or ():
                by_method.setdefault(method, []).append(f"(?P<r{n}>{pattern}$)")
        self._by_method = {method: re.compile("^(?:" + "|".join(parts) + ")") for method, parts in by_method.items()}

    def serve(self, router: Router) -> None:
        """Make `router` find an API route's HTTP request through this index: the route handles it
        as the router would have (its path parameters in the scope; its errors raised to the
        exception handlers outside); anything else (a WebSocket, /mcp, the web UI, a 404 or 405)
        goes through the router's own search."""
        search = router.middleware_stack

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            route = self.route_for(scope) if scope["type"] == "http" else None
            if route is None:
                await search(scope, receive, send)
                return
            _, child_scope = route.matches(scope)  # FULL: its path parameters, endpoint and route
            scope.update(child_scope)
            scope.setdefault("router", router)
            await route.handle(scope, receive, send)

        router.middleware_stack = dispatch

    def route_for(self, scope: Mapping[str, Any]) -> APIRoute | None:
        """The API route that will serve `scope`; None for an unknown path or method (404, 405)."""
        pattern = self._by_method.get(scope.get("method", ""))
        found = None if pattern is None else pattern.match(scope["path"])
        if found is None or found.lastgroup is None:
            return None
        return self._routes[int(found.lastgroup[1:])]


def _where(loc: Sequence[str | int]) -> tuple[str, str]:
    """A validation error's location -> ("body" / "query" / "path", "messages[0].content")."""
    kind = str(loc[0]) if loc else "body"
    param = ""
    for part in loc[1:]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part.isidentifier() and not part[:1].isupper() and part not in ("str", "int", "float", "bool") \
                and not (param == part or param.endswith(f".{part}")):  # a tagged union's tag repeats its field
            param += f".{part}" if param else part
        # else: the union member pydantic tried ("str", "list[Part]", "ResponseFormatText"): not a place
    return kind, param


def _validation_error(path: str, errors: Sequence[Any]) -> Response:
    """A RequestValidationError as the API's error: 422 with every invalid value and why (400 in
    OpenAI's shape under /v1/, naming the first invalid parameter as OpenAI does)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}  # one entry per place: a union's members merged
    for error in errors:
        kind, param = _where(error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":  # its loc is ("body", position)
            kind, param = "body", ""
            message = f"the body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
        entry = merged.setdefault((kind, param), {"kind": kind, "param": param, "msgs": [], "type": error.get("type", "")})
        if message not in entry["msgs"]:
            entry["msgs"].append(message)
    entries = list(merged.values())
    for entry in entries:
        entry["msg"] = " or ".join(entry["msgs"])
        entry["where"] = entry["param"] or entry["kind"]
        if entry["kind"] in ("query", "path", "header", "cookie") and entry["param"]:
            entry["where"] = f"{entry['param']} ({entry['kind']} parameter)"
    if path.startswith(OPENAI_PREFIX):
        # The deepest place first: of a union's failures, the member that came closest says most
        # ("messages[0].content[0].type", not "messages[0].content is not a string").
        entries.sort(key=lambda e: -len(str(e["param"])))
        first = entries[0] if entries else {"param": "", "type": "", "where": "body", "msg": "invalid request"}
        kind = str(first["type"])
        if kind == "missing":
            message, code = f"Missing required parameter: '{first['where']}'.", "missing_required_parameter"
        else:
            message = f"Invalid value for '{first['where']}': {first['msg']}."
            code = "invalid_type" if kind.endswith("_type") else "invalid_value"
        if len(entries) > 1:
            message += " Also: " + "; ".join(f"'{e['where']}': {e['msg']}" for e in entries[1:])
        return error_response(path, 400, message, code=code, param=first["param"] or None)
    message = "; ".join(f"{e['where']}: {e['msg']}" for e in entries) or "invalid request"
    detail = [{"loc": [e["kind"], *([e["param"]] if e["param"] else [])], "msg": e["msg"], "type": e["type"]}
              for e in entries]
    return error_response(path, 422, message, code="INVALID_ARGUMENT", detail=detail)
