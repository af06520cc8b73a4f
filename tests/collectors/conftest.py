"""The collectors service over NATS in this process (real FalkorDB, PostgreSQL, fixture origins), and
the gateway's HTTP API on a free port in front of it (its API keys in a database of their own, its
limits in a real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest_asyncio

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.engines import FalkorDB, NatsServer, Postgres, Redis
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.collectors.servicer import Collectors, assemble
from services.collectors.settings import CollectorsConfig, FetchConfig
from services.collectors.testing import DnsFixture
from services.gateway.testing import GatewayUnderTest, gateway_on_free_port


@dataclass
class CollectorsStack:
    servicer: Collectors
    client: CollectorsClient
    gateway: GatewayUnderTest  # the gateway's HTTP API: its base URL and an admin key


@pytest_asyncio.fixture
async def collectors_stack(nats_server: NatsServer, postgres_server: Postgres, falkordb_server: FalkorDB,
                           redis_server: Redis, fresh_database: Callable[[], str],
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
    servicer = await assemble(InstanceInfo(service="collectors"), config, lambda name: secrets[name])
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=30, max_concurrency=16) as nc, \
            gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway:
        yield CollectorsStack(servicer, CollectorsClient.over_nats(nc, timeout_s=30), gateway)
        await servicer.collection.graph.delete_graph()  # type: ignore[attr-defined]
