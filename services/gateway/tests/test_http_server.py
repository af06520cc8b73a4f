"""Slow clients get 408 and lose their connection; the connection cap answers 503; ordinary
clients, keep-alive included, are unaffected. Over real sockets against the gateway's server, with
a real API key (the guard answers 401 before any route without one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import nats
import pytest
import pytest_asyncio
import websockets

from bev.engines import NatsServer, Redis
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import assemble
from services.avatar.settings import AvatarConfig
from services.gateway.settings import GatewayConfig
from services.gateway.testing import gateway_on_free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = GatewayConfig(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=3)
# A cheap route with a JSON body: espeak-ng says "ok" in about a millisecond.
ROUTE = "/api/v1/avatar/speak"
BODY = b'{"text": "ok"}'
START = f"POST {ROUTE} HTTP/1.1\r\nhost: x\r\n".encode()  # a raw request's first lines


@dataclass
class Server:
    host: str
    port: int
    key: str

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def auth(self) -> bytes:
        """The Authorization header line of a raw request."""
        return f"authorization: Bearer {self.key}\r\n".encode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(nats_server: NatsServer, fresh_database: Callable[[], str],
                  redis_server: Redis) -> AsyncIterator[Server]:
    avatar_nc = await nats.connect(nats_server.url)  # the avatar's own, as its process has
    avatar = await assemble(InstanceInfo(service="avatar"), AvatarConfig(), avatar_nc)
    try:
        async with serving_on_nats(avatar, nats_server.url) as nc, \
                gateway_on_free_port(nc, fresh_database(), redis_server.url, CONFIG) as gateway:
            host, port = gateway.url.removeprefix("http://").split(":")
            yield Server(host, int(port), gateway.admin_key)
    finally:
        await avatar_nc.close()


async def _read_all(reader: asyncio.StreamReader, within_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), within_s)  # until the server closes


async def test_headers_that_never_finish_get_408_and_a_closed_connection(gateway: Server) -> None:
    reader, writer = await asyncio.open_connection(*gateway.address)
    began = time.monotonic()
    writer.write(START)  # and then nothing
    await writer.drain()
    answer = await _read_all(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408") and b"not received in time" in answer
    assert 0.4 < time.monotonic() - began < 3
    writer.close()


async def test_a_body_that_never_finishes_gets_408(gateway: Server) -> None:
    reader, writer = await asyncio.open_connection(*gateway.address)
    writer.write(START + b"content-type: application/json\r\n" + gateway.auth()
                 + b"content-length: 100\r\n\r\n" + BODY[:10])
    await writer.drain()
    answer = await _read_all(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_headers_trickled_on_a_kept_alive_connection_are_timed_too(gateway: Server) -> None:
    reader, writer = await asyncio.open_connection(*gateway.address)
    request = (START + b"content-type: application/json\r\n" + gateway.auth()
               + b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    writer.write(request)
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 200")
    length = int(next(line.split(b":")[1] for line in first.split(b"\r\n") if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    for byte in request[:4]:  # the next request's first bytes, one every 0.1 s, and no more
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.1)
    answer = await _read_all(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_ordinary_clients_are_served_and_the_cap_answers_503(gateway: Server) -> None:
    base = f"http://{gateway.host}:{gateway.port}"
    headers = {"Authorization": f"Bearer {gateway.key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as http:
        for _ in range(3):  # keep-alive: one connection, several requests
            response = await http.post(ROUTE, content=BODY, headers={"content-type": "application/json"})
            assert response.status_code == 200
    idle = [await asyncio.open_connection(*gateway.address) for _ in range(CONFIG.max_connections)]
    async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as http:
        over = await http.post(ROUTE, content=BODY, headers={"content-type": "application/json"})
    assert over.status_code == 503
    for _, writer in idle:
        writer.close()


async def test_a_websocket_outlives_the_request_deadlines() -> None:
    """An upgraded connection is the WebSocket protocol's: the deadlines armed for the upgrade
    request must not fire into its frame stream (browsers saw "Invalid frame header" a minute in)."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from bev.engines import free_port
    from services.gateway.http_server import GatewayServer, server_config

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            await websocket.send_text(await websocket.receive_text())

    config = CONFIG.model_copy(update={"port": free_port()})
    server = GatewayServer(server_config(Starlette(routes=[WebSocketRoute("/ws", echo)]), config))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises why it could not start
            await asyncio.sleep(0.02)
        async with websockets.connect(f"ws://127.0.0.1:{config.port}/ws", open_timeout=5) as ws:
            for n in range(4):  # past both deadlines (0.5 s) twice over
                await asyncio.sleep(0.5)
                await ws.send(str(n))
                assert await asyncio.wait_for(ws.recv(), 5) == str(n)
    finally:
        server.should_exit = True
        await serving
