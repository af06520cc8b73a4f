"""The gateway's HTTP API inside a test, in front of servicers the test serves on NATS: the path an
analyst's request takes, over real HTTP on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NatsClient

from bev.engines import free_port
from bev.manifest import load_manifest
from services.gateway.api import create_app
from services.gateway.http_server import GatewayServer, server_config
from services.gateway.settings import GatewayConfig


@asynccontextmanager
async def gateway_on_free_port(nc: NatsClient, config: GatewayConfig | None = None) -> AsyncIterator[str]:
    """The gateway's HTTP API over `nc`, served as the gateway service serves it (slow-client
    deadlines included), with the clients its manifest entry declares; yields its base URL."""
    config = (config or GatewayConfig()).model_copy(update={"host": "127.0.0.1", "port": free_port()})
    app = create_app(nc, config, load_manifest().callees("gateway"))
    server = GatewayServer(server_config(app, config))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await task
