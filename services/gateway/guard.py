"""The gate every request passes before any route: its API key, its rate limit, its audit entry.

An ASGI middleware, outermost in the app, so nothing (not a 404, not a 413, not the OpenAPI
schema) answers a caller without a valid key; only `/healthz` and the web UI's static files
(services/gateway/web_ui.py: they hold no data) are open. In order:

1. `Authorization: Bearer bev_<id>_<secret>` (the openai client sends its api_key so; a browser's
   WebSocket, which cannot set headers, offers the subprotocols `bev.bearer` and the key): 401
   without one, for an unknown key or a wrong secret, and for a revoked or expired key.
2. The key's hourly request bucket in Redis (services/gateway/limits.py): 429 with Retry-After
   and RateLimit-* headers; every answer to a key carries RateLimit-* headers.
3. The route runs with `request.state.caller` set (services/gateway/deps.py reads it; a route's
   scope check answers 403).
4. Every mutating call (not GET/HEAD/OPTIONS) and every denied one (401, 403, 429) is written to
   the audit log (PostgreSQL access.audit) and published on `bev.events.audit.denied` or
   `bev.events.audit.call` (JetStream stream BEV_EVENTS keeps them; subscribe to
   `bev.events.audit.>`).

Audit entries are written once the answer has gone out, by one writer task that gathers them for
`audit_flush_s` (50 ms) and inserts the lot in one statement: the caller does not wait for it, nor
does the next request on the connection, and busy traffic costs one round trip per batch, not per
call. The price: a gateway killed outright loses the entries of its last 50 ms (a log line per
call it answered is the only trace then); `drain()`, at every orderly shutdown, writes them all.

Verified keys are cached for `cache_s` seconds (by a hash of the presented key), so a request
costs no database round trip; a revocation through this replica applies at once, elsewhere within
`cache_s`. Keys never reach a log: only key ids do.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi.routing import APIRoute
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, get_global_textmap
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bev.access import ApiKey, AuditEntry, AuditLog, KeyStore
from bev.telemetry import active_span, cache_stats, get_logger
from services.gateway.caller import Caller
from services.gateway.limits import Limits
from services.gateway.routes.common import error_response
from services.gateway.web_ui import is_ui_path

log = get_logger(__name__)
KEY_CACHE = cache_stats("gateway_api_keys")  # bev_cache_hit_rate{cache="gateway_api_keys"}
tracer = trace.get_tracer("bev.gateway")

OPEN_PATHS = frozenset({"/healthz"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DENIED = frozenset({401, 403, 429})
AUDIT_SUBJECT = "bev.events.audit"  # .denied or .call
DENIED_SUBJECT, CALL_SUBJECT = f"{AUDIT_SUBJECT}.denied", f"{AUDIT_SUBJECT}.call"

Publish = Callable[[str, bytes], Awaitable[None]]


class Unauthenticated(Exception):
    """No usable key; str() says why (never echoing the key). `key`: the record of a revoked or
    expired key, for the audit log."""

    def __init__(self, message: str, key: ApiKey | None = None) -> None:
        super().__init__(message)
        self.key = key


class GuardUnavailable(Exception):
    """PostgreSQL (keys) or Redis (limits) cannot answer: 503 with this one-line cause."""


WS_BEARER_PROTOCOL = "bev.bearer"  # a browser's WebSocket offers ["bev.bearer", key]: it cannot set headers


def bearer(headers: Headers) -> str:
    """The key in `Authorization: Bearer <key>`; for a WebSocket handshake without that header, the
    subprotocol after `bev.bearer` in Sec-WebSocket-Protocol; else ""."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    offered = [item.strip() for item in headers.get("sec-websocket-protocol", "").split(",")]
    if WS_BEARER_PROTOCOL in offered[:-1]:
        return offered[offered.index(WS_BEARER_PROTOCOL) + 1]
    return ""


@dataclass
class _Cached:
    key: ApiKey
    until: float


class Guard:
    """Authentication, rate limits and audit for the gateway's app (see the module docstring)."""

    def __init__(self, keys: KeyStore, limits: Limits, audit: AuditLog, publish: Publish | None = None,
                 cache_s: float = 5.0, audit_flush_s: float = 0.05) -> None:
        self.keys, self.limits, self.audit = keys, limits, audit
        self.publish = publish
        self.cache_s = cache_s
        self.audit_flush_s = audit_flush_s
        self._cache: dict[bytes, _Cached] = {}
        self.routes: list[APIRoute] = []  # create_app fills it: the route template each audit entry names
        self.mounted: frozenset[str] = frozenset()  # paths served by a mounted ASGI app (/mcp)
        self._queued: list[AuditEntry] = []
        self._writer: asyncio.Task[None] | None = None
        self._textmap: TextMapPropagator | None = None  # the propagator _trace_fields was read from
        self._trace_fields: frozenset[bytes] = frozenset()

    async def authenticate(self, presented: str) -> ApiKey:
        if not presented:
            raise Unauthenticated("an API key is required: send Authorization: Bearer <key>")
        digest = hashlib.sha256(presented.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached.until > now:
            KEY_CACHE.hit()
            key = cached.key
        else:
            KEY_CACHE.miss()
            try:
                found = await self.keys.verify(presented)
            except (psycopg.Error, PoolTimeout) as exc:
                raise GuardUnavailable(f"API keys cannot be checked: PostgreSQL: {_one_line(exc)}") from None
            if found is None:
                self._cache.pop(digest, None)
                raise Unauthenticated("the API key is not valid")
            key = found
            if len(self._cache) > 10_000:  # bounded: drop the expired, else everything
                self._cache = {d: c for d, c in self._cache.items() if c.until > now}
                if len(self._cache) > 10_000:
                    self._cache.clear()
            self._cache[digest] = _Cached(key, now + self.cache_s)
        state = key.state()
        if state != "active":
            raise Unauthenticated(f"API key {key.id} is {state}", key)
        return key

    async def drain(self) -> None:
        """Wait for the queued audit entries to be written."""
        while self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer])

    def _audit(self, key: ApiKey | None, method: str, route: str, path_params: dict[str, Any], scope: Scope,
               object_id: str, status: int, trace_id: str) -> None:
        client = scope.get("client")
        self._queued.append(AuditEntry(
            key_id=key.id if key else "", team=key.team if key else "", method=method, route=route,
            path=scope["path"][:500], object_id=object_id or _object_id(path_params.values()), status=status,
            trace_id=trace_id, client=f"{client[0]}:{client[1]}" if client else ""))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())

    def forget(self, key_id: str) -> None:
        """Drop a key from this replica's cache (it was revoked here)."""
        self._cache = {d: c for d, c in self._cache.items() if c.key.id != key_id}

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI app that puts this guard in front of `app` (add it last: it must run first)."""

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS or (
                    scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and is_ui_path(scope["path"])):
                await app(scope, receive, send)
                return
            await self._serve(app, scope, receive, send)

        return guarded

    async def _serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        # Named by its route once routing has run (matching it here too would cost every request).
        with active_span(tracer, f"HTTP {method}", SpanKind.SERVER, self._parent(scope, headers)) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            key: ApiKey | None = None
            try:
                key = await self.authenticate(bearer(headers))
                try:
                    decision = await self.limits.take_request(key)
                except RedisError as exc:
                    raise GuardUnavailable(f"rate limits cannot be checked: Redis: {_one_line(exc)}") from None
            except Unauthenticated as exc:
                await self._deny(scope, receive, send, 401, str(exc), {"WWW-Authenticate": 'Bearer realm="bev"'})
                self._audit(exc.key, method, *self._route(scope), scope, "", 401, trace_id)
                return
            except GuardUnavailable as exc:
                log.warning("request refused: the guard cannot check it", cause=str(exc))
                await self._deny(scope, receive, send, 503, str(exc), {"Retry-After": "5"})
                return
            if not decision.allowed:
                retry = {**decision.headers(), "Retry-After": str(max(1, int(decision.retry_after_s + 0.999)))}
                await self._deny(scope, receive, send, 429,
                                 f"key {key.id} is over its {decision.limit} requests per hour", retry)
                self._audit(key, method, *self._route(scope), scope, "", 429, trace_id)
                return
            scope.setdefault("state", {})["caller"] = Caller(key)
            status, location = 0, ""

            async def send_with_limits(message: Message) -> None:
                nonlocal status, location
                if message["type"] == "http.response.start":
                    status = message["status"]
                    raw = list(message.get("headers", ()))
                    has_limits = False  # a budget's 429 has its own RateLimit-* headers
                    for raw_name, value in raw:
                        name = raw_name.lower()
                        if name == b"location" and not location:
                            location = value.decode("latin-1")
                        elif name == b"ratelimit-limit":
                            has_limits = True
                    if not has_limits:
                        raw += decision.raw_headers()
                    message = {**message, "headers": raw}
                elif message["type"] == "websocket.http.response.start":  # a route's denial
                    status = message["status"]
                elif message["type"] == "websocket.accept":
                    status = 101
                elif message["type"] == "websocket.close" and not status:
                    status = 403
                await send(message)

            try:
                await app(scope, receive, send_with_limits)
            finally:
                # The router left the route it chose in the scope.
                served = scope.get("route")
                route = scope["path"] if scope["path"] in self.mounted else getattr(served, "path", "")
                span.update_name(f"HTTP {method} {route or 'unknown'}")
                if method not in READ_METHODS or status in DENIED:
                    if not route:  # a 404 or 405: no route ran
                        route = self._route(scope)[0]
                    object_id = location.rstrip("/").rsplit("/", 1)[-1] if location else ""
                    self._audit(key, method, route, dict(scope.get("path_params", {})), scope, object_id,
                                status or 500, trace_id)

    def _parent(self, scope: Scope, headers: Headers) -> Context:
        """The caller's trace context, as extract(headers) answers. Most calls carry none of the
        propagator's headers, and for those the answer is an empty Context: one pass over the raw
        headers spares the propagators' lookups."""
        textmap = get_global_textmap()
        if textmap is not self._textmap:  # set up (or replaced) since the last request
            self._textmap, self._trace_fields = textmap, frozenset(f.lower().encode() for f in textmap.fields)
        fields = self._trace_fields
        for name, _ in scope["headers"]:
            if name in fields:
                return extract(headers)
        return Context()

    def _route(self, scope: Scope) -> tuple[str, dict[str, Any]]:
        """The template of the route that serves `scope` and its path parameters ("" for none)."""
        if scope["path"] in self.mounted:
            return scope["path"], {}
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route.path, dict(child.get("path_params", {}))
        for route in self.routes:  # a 405: the path exists for other methods
            if route.path_regex.match(scope["path"]):
                return route.path, {}
        return "", {}

    async def _deny(self, scope: Scope, receive: Receive, send: Send, status: int, message: str,
                    headers: dict[str, str]) -> None:
        response = error_response(scope["path"], status, message, headers=headers)
        if scope["type"] == "websocket":
            if "websocket.http.response" in scope.get("extensions", {}):  # uvicorn: the real status
                await send({"type": "websocket.http.response.start", "status": status,
                            "headers": response.raw_headers})
                await send({"type": "websocket.http.response.body", "body": response.body})
                return
            # Closing before accepting answers the handshake with HTTP 403 (the ASGI spec).
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await response(scope, receive, send)

    async def _write_queued(self) -> None:
        await asyncio.sleep(self.audit_flush_s)  # gather a batch
        while self._queued:
            batch, self._queued = self._queued[:500], self._queued[500:]
            try:
                ids = await self.audit.write_many(batch)
            except Exception as exc:  # the calls were answered; the log lines keep the record
                reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
                for entry in batch:
                    log.error("audit entry not written", error=reason,
                              **{k: v for k, v in entry.to_json().items() if k != "at"})
                continue
            if self.publish is None:
                continue
            for entry, entry_id in zip(batch, ids, strict=True):
                try:
                    await self.publish(DENIED_SUBJECT if entry.status in DENIED else CALL_SUBJECT,
                                       entry.event_body(entry_id))
                except Exception as exc:  # the row is the record; the event is a convenience
                    log.warning("audit event not published", error=repr(exc), entry=entry_id)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _object_id(values: Iterable[Any]) -> str:
    return next((str(v) for v in values), "")
