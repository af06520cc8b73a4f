"""The analysts' HTTP API. Every route is a typed RPC over NATS to the service that owns the work;
routes live in services/gateway/routes/, one module per domain.

No input yields a 5xx: bodies are size-limited (413); text no service can take (NUL, lone
surrogates) and numbers no service can hold (NaN, Infinity, 1e309, integers beyond 64 bits) are
refused before any route reads them (400, services/gateway/inputs.py); every body model is strict
and every integer bounded (422 with each invalid value; OpenAI's 400 and error shape under /v1/).
Every status a route can answer is declared in the OpenAPI schema (tests/test_gateway_fuzz.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from nats.aio.client import Client as NatsClient
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from bev.rpc import RpcError
from bev.telemetry import get_logger
from services.gateway.clients import Clients
from services.gateway.deps import SCOPE_HEADER
from services.gateway.guard import OPEN_PATHS, Guard
from services.gateway.http_metrics import HttpMetrics
from services.gateway.inputs import json_problem, parameters_problem
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

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


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

    app = FastAPI(title="BEV gateway", version="0.1.0", redirect_slashes=False,
                  description=API_DESCRIPTION, lifespan=lifespan)
    # What routes depend on (services/gateway/deps.py).
    app.state.clients = clients
    app.state.guard = guard
    routes: list[APIRoute] = []
    for module in (fleet, reasoning, openai, embeddings, collectors, swarm, avatar, monitoring, access):
        own = [route for route in module.router.routes if isinstance(route, APIRoute)]
        _document_scopes(own)
        _document_errors(own)  # before include_router, which reads each route's responses
        routes += own
        app.include_router(module.router)
    guard.routes = routes
    # MCP over streamable HTTP (services/gateway/mcp_tools.py), behind the guard like every route;
    # each tool checks the scope it needs. Not in the OpenAPI schema: it is JSON-RPC, not REST.
    app.router.routes.append(Route(MCP_PATH, mcp.app, methods=["GET", "POST", "DELETE"]))
    guard.mounted = frozenset({MCP_PATH})
    app.router.routes.extend(ui_routes(config.web_dir))  # the web UI at / (services/gateway/web_ui.py)

    # Middleware added later runs first: the size limit, then the content checks.
    @app.middleware("http")
    async def refuse_unrepresentable(request: Request,
                                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        route = _route_for(routes, request)
        problem = None if route is None else await _input_problem(route, request)
        if problem is not None:
            return error_response(request.url.path, 400, problem, code="INVALID_ARGUMENT")
        return await call_next(request)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Content-Length is checked before reading; chunked bodies are counted as they arrive.
        # /mcp carries documents too (document_intelligence), base64 in JSON: the upload limit.
        large = request.url.path in (*embeddings.UPLOAD_PATHS, collectors.FILES_PATH, MCP_PATH)
        limit = config.max_upload_bytes if large else config.max_body_bytes
        path = request.url.path
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return error_response(path, 413, f"body over {limit} bytes", code="RESOURCE_EXHAUSTED")
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return error_response(path, 413, f"body over {limit} bytes", code="RESOURCE_EXHAUSTED")
            request._body = body  # let the route read what was already consumed
        return await call_next(request)

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


def _route_for(routes: Iterable[APIRoute], request: Request) -> APIRoute | None:
    """The API route that will serve `request`; None for an unknown path or method (404, 405)."""
    return next((route for route in routes if route.matches(request.scope)[0] is Match.FULL), None)


async def _input_problem(route: APIRoute, request: Request) -> str | None:
    """Why `request` is refused whatever its route's model says, or None."""
    problem = parameters_problem(request.scope["path"], request.query_params.multi_items())
    if problem is not None or route.body_field is None:
        return problem
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or (content_type.startswith("application/") and content_type.endswith("+json")):
        return json_problem(await request.body())
    if content_type in _FORM_TYPES:
        await request.body()  # cached: the route parses the form again from it
        try:
            form = await request.form()
        except Exception:  # a malformed form: the route answers it
            return None
        try:
            fields = [(name, value if isinstance(value, str) else value.filename or "")
                      for name, value in form.multi_items()]
            return parameters_problem("", fields, "form field")
        finally:
            await form.close()
    return None


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
