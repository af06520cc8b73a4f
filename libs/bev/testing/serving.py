"""Serve a servicer inside a test, as the fleet would: the servicer gets its own NATS connection,
as its own process would; the caller gets another. (The gateway in front of it:
services.gateway.testing.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client as NatsClient

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
                           instance=servicer.info.instance, metadata=servicer.info.discovery_metadata())
    await servicer.start()
    await server.start()
    try:
        yield client_nc
    finally:
        await servicer.stopping()  # the order bev.runtime stops a service in
        await server.stop()
        await servicer.close()
        await client_nc.close()
        await server_nc.close()
