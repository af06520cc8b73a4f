"""What a route depends on, as FastAPI dependencies: the service clients, the caller (the API key
the request came with, authenticated by services/gateway/guard.py before any route runs), the
scope a route needs, and the caller's daily LLM token budget.

A route module declares these in its signature (the fastapi full-stack template's style):

    @router.get("/api/v1/investigations/{id}", dependencies=[READ])
    async def get(id: str, clients: ClientsDep, caller: CallerDep) -> ...:
        await clients.swarm.GetInvestigation(GetInvestigationRequest(id=id, access=caller.access()))

Every service request that reads or makes a team's objects carries `caller.access()`
(bev.common.v1.Access): the service answers NOT_FOUND for another team's object and leaves out
items above the caller's TLP, so the rule holds for every client of the service, not only here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, WebSocket
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect, WebSocketState

from bev.telemetry import get_logger
from services.gateway.caller import Caller, Scope
from services.gateway.clients import Clients
from services.gateway.guard import WS_BEARER_PROTOCOL, Guard
from services.gateway.routes.common import error_response

__all__ = ["ADMIN", "READ", "WRITE", "Caller", "CallerDep", "ClientsDep", "LlmBudgetDep", "Scope", "accept_websocket",
           "needs", "refuse_websocket", "refused_without_read", "serve_websocket"]
log = get_logger(__name__)
SCOPE_HEADER = "x-bev-scope"  # the OpenAPI extension each route's required scope is written to


# HTTPConnection, not Request: FastAPI passes it to WebSocket routes' dependencies too.
# `async def` though none awaits: FastAPI runs a plain `def` dependency on a worker thread, a
# thread hop per dependency per request (~3 per route) for a dict lookup.
async def get_clients(connection: HTTPConnection) -> Clients:
    clients: Clients = connection.app.state.clients
    return clients


def get_guard(connection: HTTPConnection) -> Guard:
    guard: Guard = connection.app.state.guard
    return guard


async def get_caller(connection: HTTPConnection) -> Caller:
    caller: Caller | None = getattr(connection.state, "caller", None)
    if caller is None:  # only a route outside the guard (none is) could get here
        raise HTTPException(401, "an API key is required (Authorization: Bearer <key>)")
    return caller


ClientsDep = Annotated[Clients, Depends(get_clients)]
CallerDep = Annotated[Caller, Depends(get_caller)]


def needs(scope: Scope) -> Any:
    """A route dependency: 403 unless the caller's key holds `scope` (create_app also writes the
    scope into the route's OpenAPI operation as x-bev-scope)."""

    async def check(caller: CallerDep) -> None:
        if not caller.has(scope):
            raise HTTPException(403, f"this route needs an API key with the {scope!r} scope; "
                                     f"key {caller.key.id} has {', '.join(sorted(caller.key.scopes)) or 'none'}")

    check.bev_scope = scope  # type: ignore[attr-defined]  # read by create_app to document the route
    return Depends(check)


READ = needs("read")
WRITE = needs("write")
ADMIN = needs("admin")


class LlmBudget:
    """The caller's LLM tokens for today, as a route dependency: 429 before the model runs when the
    key's daily budget is spent; the route reports what the call used with `spend`."""

    def __init__(self, guard: Guard, caller: Caller) -> None:
        self._guard, self._caller = guard, caller

    async def spend(self, tokens: int) -> None:
        if tokens > 0:
            await self._guard.limits.spend_tokens(self._caller.key, tokens)


async def llm_budget(request: Request, caller: CallerDep) -> LlmBudget:
    guard = get_guard(request)
    await guard.limits.check_tokens(caller.key)  # raises RateLimited -> 429 with Retry-After
    return LlmBudget(guard, caller)


LlmBudgetDep = Annotated[LlmBudget, Depends(llm_budget)]


async def accept_websocket(websocket: WebSocket) -> None:
    """Accept a handshake, naming `bev.bearer` when the client offered it (a browser sending its key
    as a subprotocol fails the connection unless the server picks one of those it offered)."""
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=WS_BEARER_PROTOCOL if WS_BEARER_PROTOCOL in offered else None)


async def refuse_websocket(websocket: WebSocket, status: int, message: str, code: str) -> None:
    """Answer the handshake with an HTTP error (where the server can), else accept, say why and close."""
    denial = error_response(websocket.url.path, status, message, code=code)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(denial)  # the client sees the HTTP status
    else:
        await accept_websocket(websocket)
        await websocket.send_text(bytes(denial.body).decode("ascii"))
        await websocket.close(1008 if status in (403, 404) else 1011)


async def refused_without_read(websocket: WebSocket, caller: Caller) -> bool:
    """A WebSocket route's scope check, answered as an HTTP 403 to the handshake (a dependency's
    exception could not be): True when it refused."""
    if caller.has("read"):
        return False
    await refuse_websocket(websocket, 403, f"this route needs an API key with the 'read' scope; key {caller.key.id} "
                                           f"has {', '.join(sorted(caller.key.scopes)) or 'none'}", "PERMISSION_DENIED")
    return True


async def serve_websocket(websocket: WebSocket, send: Awaitable[None], **context: str) -> None:
    """Run `send` (what the route streams) until it ends or the client goes; later messages from
    the client are ignored. Both tasks are stopped either way, and the socket closed (1000) if
    `send` left it open; a failure of `send` is logged with `context`."""

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender, listener = asyncio.ensure_future(send), asyncio.create_task(until_disconnect())
    try:
        await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, listener):
            task.cancel()
        for task in (sender, listener):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            log.warning("WebSocket stream failed", path=websocket.url.path, error=repr(sender.exception()), **context)
        if websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close(1000)
