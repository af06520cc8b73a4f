"""BEV's pytest plugin (registered through the `pytest11` entry point): the one fixture set.

Engines (NATS, PostgreSQL+pgvector, Redis, FalkorDB, OpenBao) start once per session on free
ports; RPC fixtures serve the Echo service over both transports. `--bev-live DATA_DIR` points
fleet tests at an already running fleet (`bev up --data-dir DATA_DIR`) instead of starting one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from bev.engines import NatsServer
from bev.rpc import InstanceInfo
from bev.rpc.grpc_transport import GrpcRpcServer
from bev.telemetry import ensure_tracer_provider
from bev.testing import collector_fixtures, embeddings_fixtures, engine_fixtures, reasoning_fixtures
from bev.testing.echo import Echo
from bev.testing.serving import serving_on_nats

ECHO_MAX_REQUEST_BYTES = 1024 * 1024


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bev-live", metavar="DATA_DIR", default=None,
                     help="run fleet tests against the fleet started with `bev up --data-dir DATA_DIR`")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(engine_fixtures, "bev.engines")
    config.pluginmanager.register(collector_fixtures, "bev.collector_fixtures")
    config.pluginmanager.register(embeddings_fixtures, "bev.embeddings")
    config.pluginmanager.register(reasoning_fixtures, "bev.reasoning")
    config.addinivalue_line("markers", "slow: starts the whole fleet or runs a model (deselect with -m 'not slow')")
    ensure_tracer_provider()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@dataclass
class EchoEndpoints:
    nc: NatsClient
    grpc_address: str
    servicer: Echo
    instance: str


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def echo_service(nats_server: NatsServer) -> AsyncIterator[EchoEndpoints]:
    """The Echo servicer served over NATS (own connection, as a separate process would) and gRPC."""
    servicer = Echo(InstanceInfo(service="echo"))
    on_grpc = GrpcRpcServer(servicer, host="127.0.0.1", port=0, max_request_bytes=ECHO_MAX_REQUEST_BYTES,
                            default_timeout_s=10)
    port = await on_grpc.start()
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=10,
                               max_request_bytes=ECHO_MAX_REQUEST_BYTES) as nc:
        yield EchoEndpoints(nc, f"127.0.0.1:{port}", servicer, servicer.info.instance)
    await on_grpc.stop(1)
