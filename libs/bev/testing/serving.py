"""Serve a servicer (and the gateway in front of it) inside a test, as the fleet would.

The servicer gets its own NATS connection, as its own process would; the caller gets another. The
gateway runs under uvicorn on a free port, so tests talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import uvicorn
from nats.aio.client import Client as NatsClient

from bev.engines import free_port
from bev.rpc.nats_transport import NatsRpcServer
from bev.rpc.servicer import Servicer

MAX_REQUEST_BYTES = 4 * 1024 * 1024


@asynccontextmanager
async def serving_on_nats(
    servicer: Servicer, nats_url: str, *, default_timeout_s: float = 60, max_concurrency: int = 64,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> AsyncIterator[NatsClient]:
    """Start `servicer` (its `start()` too) on NATS; yields a caller's connection; stops it all on exit."""
    server_nc = await nats.connect(nats_url)
    client_nc = await nats.connect(nats_url)
    server = NatsRpcServer(server_nc, servicer, max_request_bytes=max_request_bytes,
                           default_timeout_s=default_timeout_s, max_concurrency=max_concurrency,
                           instance=servicer.info.instance)
    await servicer.start()
    await server.start()
    try:
        yield client_nc
    finally:
        await server.stop()
        await servicer.close()
        await client_nc.close()
        await server_nc.close()


@asynccontextmanager
async def gateway_on_free_port(nc: NatsClient, rpc_timeout_s: float = 60) -> AsyncIterator[str]:
    """The gateway's HTTP API over `nc`; yields its base URL."""
    from services.gateway.api import create_app  # the gateway is a service, not part of libs
    from services.gateway.settings import GatewayConfig

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(nc, GatewayConfig(rpc_timeout_s=rpc_timeout_s)),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
