"""The analysts' HTTP API. Every route is a typed RPC over NATS to the service that owns the work;
routes live in services/gateway/routes/, one module per domain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NatsClient

from bev.rpc import RpcError
from services.gateway.clients import Clients
from services.gateway.routes import avatar, collectors, embeddings, fleet, openai, reasoning, swarm
from services.gateway.routes.common import HTTP_STATUS
from services.gateway.settings import GatewayConfig


def create_app(nc: NatsClient, config: GatewayConfig, callees: Iterable[str]) -> FastAPI:
    """The HTTP API over `nc`; `callees` are the services the gateway's manifest entry calls."""
    app = FastAPI(title="BEV gateway", version="0.1.0")
    clients = Clients.over_nats(nc, config.rpc_timeout_s, callees)
    for module in (fleet, reasoning, openai, embeddings, collectors, swarm, avatar):
        app.include_router(module.router(clients))

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Content-Length is checked before reading; chunked bodies are counted as they arrive.
        limit = config.max_upload_bytes if request.url.path in embeddings.UPLOAD_PATHS else config.max_body_bytes
        too_big = JSONResponse({"error": f"body over {limit} bytes"}, status_code=413)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_big
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return too_big
            request._body = body  # let the route read what was already consumed
        return await call_next(request)

    @app.exception_handler(RpcError)
    async def rpc_error(_: Request, exc: RpcError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "code": exc.code.name}, status_code=HTTP_STATUS.get(exc.code, 502))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return app
