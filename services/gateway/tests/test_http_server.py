"""Slow clients get 408 and lose their connection; the connection cap answers 503; ordinary
clients, keep-alive included, are unaffected. Over real sockets against the gateway's server, with
a real API key (the guard answers 401 before any route without one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from bev.engines import NatsServer, Redis
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import Avatar
from services.avatar.settings import AvatarConfig
from services.gateway.settings import GatewayConfig
from services.gateway.testing import gateway_on_free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = GatewayConfig(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=3)
STATE = b'{"session_id": "s", "state": "idle"}'


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
    avatar = Avatar(InstanceInfo(service="avatar"), AvatarConfig())
    async with serving_on_nats(avatar, nats_server.url) as nc, \
            gateway_on_free_port(nc, fresh_database(), redis_server.url, CONFIG) as gateway:
        host, port = gateway.url.removeprefix("http://").split(":")
        yield Server(host, int(port), gateway.admin_key)


async def _read_all(reader: asyncio.StreamReader, within_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), within_s)  # until the server closes


async def test_headers_that_never_finish_get_408_and_a_closed_connection(gateway: Server) -> None:
    reader, writer = await asyncio.open_connection(*gateway.address)
    began = time.monotonic()
    writer.write(b"POST /api/v1/avatar/state HTTP/1.1\r\nhost: x\r\n")  # and then nothing
    await writer.drain()
    answer = await _read_all(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408") and b"not received in time" in answer
    assert 0.4 < time.monotonic() - began < 3
    writer.close()


async def test_a_body_that_never_finishes_gets_408(gateway: Server) -> None:
    reader, writer = await asyncio.open_connection(*gateway.address)
    writer.write(b"POST /api/v1/avatar/state HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + gateway.auth()
                 + b"content-length: 100\r\n\r\n" + STATE[:10])
    await writer.drain()
    answer = await _read_all(reader, 5)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_headers_trickled_on_a_kept_alive_connection_are_timed_too(gateway: Server) -> None:
    reader, writer = await asyncio.open_connection(*gateway.address)
    request = (b"POST /api/v1/avatar/state HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + gateway.auth()
               + b"content-length: " + str(len(STATE)).encode() + b"\r\n\r\n" + STATE)
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
            response = await http.post("/api/v1/avatar/state", content=STATE, headers={"content-type": "application/json"})
            assert response.status_code == 200
    idle = [await asyncio.open_connection(*gateway.address) for _ in range(CONFIG.max_connections)]
    async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as http:
        over = await http.post("/api/v1/avatar/state", content=STATE, headers={"content-type": "application/json"})
    assert over.status_code == 503
    for _, writer in idle:
        writer.close()
