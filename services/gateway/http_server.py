"""The gateway's HTTP server: uvicorn, with deadlines on slow clients.

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

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from bev.telemetry import get_logger
from services.gateway.settings import GatewayConfig

log = get_logger(__name__)

_TIMEOUT_BODY = b'{"error": "the request was not received in time"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


class SlowClientGuard(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers and on its body."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: object = None  # the h11 state the armed deadline guards
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow_request_state()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request_state()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The connection is the WebSocket protocol's from here on (this protocol never hears of it
        # again): a deadline left armed would write a 408 into the frame stream a minute later.
        self._upgraded = True
        self._disarm()
        super().handle_websocket_upgrade(event)

    def _follow_request_state(self) -> None:
        """Arm the deadline for the part of the request the client owes now, if it changed."""
        state = self.conn.their_state
        if state is self._waiting_for or self._upgraded:
            return
        self._disarm()
        if state is h11.IDLE:
            self._arm(state, self.header_timeout_s)
        elif state is h11.SEND_BODY:
            self._arm(state, self.body_timeout_s)

    def _arm(self, state: object, seconds: float) -> None:
        self._waiting_for = state
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._waiting_for = None, None

    def _timed_out(self) -> None:
        part = "headers" if self._waiting_for is h11.IDLE else "body"
        self._deadline, self._waiting_for = None, None
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
