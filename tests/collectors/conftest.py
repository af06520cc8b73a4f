"""The collectors service over NATS in this process (real FalkorDB, PostgreSQL, fixture origins), and
the gateway's HTTP API on a free port in front of it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest_asyncio
import uvicorn

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.engines import FalkorDB, NatsServer, Postgres, free_port
from bev.rpc import InstanceInfo
from bev.rpc.nats_transport import NatsRpcServer
from bev.testing.collector_fixtures import DnsFixture
from services.collectors.servicer import Collectors, open_collection
from services.collectors.settings import CollectorsConfig, FetchConfig
from services.gateway.api import create_app
from services.gateway.settings import GatewayConfig


@dataclass
class CollectorsStack:
    servicer: Collectors
    client: CollectorsClient
    gateway: str


@pytest_asyncio.fixture
async def collectors_stack(nats_server: NatsServer, postgres_server: Postgres, falkordb_server: FalkorDB,
                           dns_fixture: DnsFixture) -> AsyncIterator[CollectorsStack]:
    config = CollectorsConfig(
        fetch=FetchConfig(allow_ranges=["127.0.0.0/8"], nameservers=[dns_fixture.nameserver],
                          per_domain_rate_per_s=1000, tor_socks_url=""),
        graph={"name": f"svc-{uuid.uuid4().hex[:8]}"})
    secrets = {
        "postgres": {"dsn": postgres_server.dsn},
        "falkordb": {"host": falkordb_server.host, "port": str(falkordb_server.port),
                     "password": falkordb_server.password},
    }
    collection = await open_collection(config, lambda name: secrets[name])
    servicer = Collectors(InstanceInfo(service="collectors"), config, collection)
    server_nc = await nats.connect(nats_server.url)
    client_nc = await nats.connect(nats_server.url)
    on_nats = NatsRpcServer(server_nc, servicer, max_request_bytes=4 * 1024 * 1024, default_timeout_s=30,
                            max_concurrency=16, instance=servicer.info.instance)
    await on_nats.start()
    port = free_port()
    gateway = uvicorn.Server(uvicorn.Config(create_app(client_nc, GatewayConfig(rpc_timeout_s=30)),
                                            host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(gateway.serve())
    while not gateway.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    yield CollectorsStack(servicer, CollectorsClient.over_nats(client_nc, timeout_s=30), f"http://127.0.0.1:{port}")
    gateway.should_exit = True
    await serving
    await on_nats.stop()
    graph = collection.graph
    await graph.delete_graph()  # type: ignore[attr-defined]
    await servicer.close()
    await client_nc.close()
    await server_nc.close()
