"""The gateway's HTTP API inside a test, in front of servicers the test serves on NATS: the path an
analyst's request takes, over real HTTP on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from nats.aio.client import Client as NatsClient

from bev.engines import free_port
from bev.manifest import load_manifest
from services.gateway.api import create_app
from services.gateway.settings import GatewayConfig


@asynccontextmanager
async def gateway_on_free_port(nc: NatsClient, rpc_timeout_s: float = 60) -> AsyncIterator[str]:
    """The gateway's HTTP API over `nc`, with the clients its manifest entry declares; yields its base URL."""
    app = create_app(nc, GatewayConfig(rpc_timeout_s=rpc_timeout_s), load_manifest().callees("gateway"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
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
