"""The gateway's HTTP server: uvicorn on its httptools protocol, with deadlines on slow clients.

httptools (llhttp, the parser Node.js uses, in C) rather than uvicorn's h11 protocol: h11 parses in
Python and cost about a third of the gateway's per-request time (docs/decisions/0015-http-edge.md).
llhttp is stricter than h11 about what it takes: a request line or header it cannot parse, an
unknown method (`BREW`) among them, is answered 400 and the connection closed, before any app runs.

uvicorn closes idle keep-alive connections, but gives a client that sends its request slowly
all the time it wants: a header block trickled one byte at a time (slowloris), or a body that
never finishes, holds a connection and a task forever (R1 measured 1,000 such connections held
for 150 s). Here each request's header block must arrive within `header_timeout_s` of the
connection opening (or of the previous response), and its body within `body_timeout_s` of the
headers; otherwise the client gets 408 and the connection is closed. `max_connections` caps
concurrent connections and requests (uvicorn's limit_concurrency: 503 beyond it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bev.telemetry import get_logger
from services.gateway.settings import GatewayConfig

log = get_logger(__name__)

_TIMEOUT_BODY = b'{"error": "the request was not received in time"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)
_HEADERS, _BODY = "headers", "body"


class SlowClientGuard(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers and on its body.

    Follows the parser's callbacks: the headers are owed from the connection's start and from each
    answer (when every request received has been answered), the body from the end of the headers
    until the end of the message. The body's timer is armed only when a read ends with the body
    still owed, so a request that arrives whole (the usual case) never schedules one.
    """

    header_timeout_s = 10.0
    body_timeout_s = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._owed: str | None = None  # the part of a request the client owes now
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._owe(_HEADERS)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._owed is _BODY and self._deadline is None and not self._upgraded:
            self._arm(self.body_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._owed is None:  # a pipelined request, begun before the previous one was answered
            self._owe(_HEADERS)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._disarm()
        self._owed = _BODY  # its timer armed by data_received if this read does not end the message

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._owed = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle  # the last request received: answered too, so nothing is pending
        if self._owed is None and (cycle is None or cycle.response_complete) and not self.transport.is_closing():
            self._owe(_HEADERS)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._owed = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection is the WebSocket protocol's from here on (this protocol never hears of it
        # again): a deadline left armed would write a 408 into the frame stream a minute later.
        self._upgraded = True
        self._disarm()
        self._owed = None
        super().handle_websocket_upgrade()

    def _owe(self, part: str) -> None:
        self._disarm()
        self._owed = part
        if not self._upgraded:
            self._arm(self.header_timeout_s if part is _HEADERS else self.body_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        part, self._owed, self._deadline = self._owed, None, None
        if self.transport.is_closing():
            return
        log.warning("slow client: request not received in time; closing", part=part, client=str(self.client))
        cycle = self.cycle  # on a kept-alive connection: the previous request's, already answered
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()  # an app waiting on receive() gets http.disconnect
        self.transport.close()


class GatewayServer(uvicorn.Server):
    """uvicorn inside the gateway service: the service runtime owns SIGTERM/SIGINT and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_config(app: Any, config: GatewayConfig) -> uvicorn.Config:
    """uvicorn's configuration for the gateway's settings (limits and slow-client deadlines)."""
    guard = type("SlowClientGuard", (SlowClientGuard,), {
        "header_timeout_s": config.header_timeout_s, "body_timeout_s": config.body_timeout_s})
    return uvicorn.Config(app, host=config.host, port=config.port, log_config=None, access_log=False, http=guard,
                          limit_concurrency=config.max_connections, timeout_keep_alive=int(config.keep_alive_s))
