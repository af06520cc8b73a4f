"""The Echo service (tests/rpc/echo.py) served over both transports, for the RPC layer's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from bev.engines import NatsServer
from bev.rpc import InstanceInfo
from bev.rpc.grpc_transport import GrpcRpcServer
from bev.testing.serving import serving_on_nats
from tests.rpc.echo import ECHO_MAX_REQUEST_BYTES, Echo, EchoEndpoints


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def echo_service(nats_server: NatsServer, tracer_provider: None) -> AsyncIterator[EchoEndpoints]:
    """The Echo servicer served over NATS (own connection, as a separate process would) and gRPC."""
    servicer = Echo(InstanceInfo(service="echo"))
    on_grpc = GrpcRpcServer(servicer, host="127.0.0.1", port=0, max_request_bytes=ECHO_MAX_REQUEST_BYTES,
                            default_timeout_s=10)
    port = await on_grpc.start()
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=10,
                               max_request_bytes=ECHO_MAX_REQUEST_BYTES) as nc:
        yield EchoEndpoints(nc, f"127.0.0.1:{port}", servicer, servicer.info.instance)
    await on_grpc.stop(1)
