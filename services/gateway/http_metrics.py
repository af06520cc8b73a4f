"""RED metrics per HTTP route: a pure ASGI middleware, the first the gateway's requests pass.

- bev_http_requests_total{route,method,code} and bev_http_request_duration_seconds{route,method}
  (the RPC layer's buckets); bev_http_requests_in_flight (no labels: the route is known only once
  routing has run).
- bev_request_count_total{endpoint,method,status}: the same count under the BEV design's name.

`route` is the template of the route that served the request (`/api/v1/investigations/{investigation_id}`,
read from the scope Starlette's router leaves it in), never the raw path, which a caller can vary
without bound; a request no route takes is `unmatched`. A request the guard refused before routing
(401, 429, 503) is matched here to name its route. Methods outside HTTP's usual set are `OTHER`,
WebSockets `WEBSOCKET` (code 101 once accepted, else the handshake's refusal).

A streaming answer (SSE, a WebSocket) is counted once, when it ends, and its duration runs to its
last byte. Pure ASGI rather than Starlette's BaseHTTPMiddleware, which passes streamed bodies
through a task and a queue; it adds about 10 µs to a request (5 of them prometheus_client's locked
increments), against the 2-3 ms of the cheapest routed request on 2 shared cores (bench_gateway).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bev.telemetry import LATENCY_BUCKETS

HTTP_REQUESTS = Counter("bev_http_requests_total", "HTTP requests answered, by route template and status code",
                        ["route", "method", "code"])
HTTP_DURATION = Histogram("bev_http_request_duration_seconds",
                          "Time from request received to the last byte of the answer (streams: to their end)",
                          ["route", "method"], buckets=LATENCY_BUCKETS)
HTTP_IN_FLIGHT = Gauge("bev_http_requests_in_flight", "HTTP requests (and open WebSockets) being answered now")
# The BEV design's name for the request count.
REQUEST_COUNT = Counter("bev_request_count", "HTTP requests answered, by endpoint (route template) and status",
                        ["endpoint", "method", "status"])

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """The ASGI middleware; `routes`, every route of the app flat (FastAPI keeps an included
    router as one entry without a path), name the route of a request refused before routing."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        # (route, method, code) -> its children: label lookups cost more than the increments.
        self._counters: dict[tuple[str, str, str], tuple[Counter, Counter]] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            message_type = message["type"]
            if message_type == "http.response.start" or message_type == "websocket.http.response.start":
                status = message["status"]
            elif message_type == "websocket.accept":
                status = 101
            elif message_type == "websocket.close" and not status:
                status = 403  # closed before accepting: the handshake is answered 403 (the ASGI spec)
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            HTTP_IN_FLIGHT.dec()
            # No answer started: an exception, which ServerErrorMiddleware (outside this one) answers 500.
            self._record(scope, status or 500, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = self._route(scope)
        if scope["type"] == "websocket":
            method = "WEBSOCKET"
        else:
            method = scope["method"]
            method = method if method in METHODS else "OTHER"
        key = (route, method, str(status))
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = (HTTP_REQUESTS.labels(*key), REQUEST_COUNT.labels(*key))
        counters[0].inc()
        counters[1].inc()
        duration = self._durations.get(key[:2])
        if duration is None:
            duration = self._durations[key[:2]] = HTTP_DURATION.labels(route, method)
        duration.observe(seconds)

    def _route(self, scope: Scope) -> str:
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        # Refused before routing (the guard), or no route took it (404): match it now.
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                path = getattr(route, "path", None)
                if isinstance(path, str):
                    return path
        return UNMATCHED
