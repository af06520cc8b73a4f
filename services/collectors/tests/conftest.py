"""Collectors test wiring: a graph store per test (FalkorDB, and Neo4j when NEO4J_URI is set),
the observations schema in the session's PostgreSQL, a Collection over local fixture servers, and
the service itself served on NATS as the fleet serves it."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import neo4j
import pytest
import pytest_asyncio

from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.engines import FalkorDB, NatsServer, Postgres
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.collectors.collection import Collection
from services.collectors.contract import load_collectors
from services.collectors.fetch import Fetcher
from services.collectors.graph import CypherGraphStore, FalkorGraphStore, Neo4jGraphStore
from services.collectors.observations import ObservationStore, migrate
from services.collectors.servicer import Collectors, assemble
from services.collectors.settings import CollectorsConfig
from services.collectors.testing import DnsFixture, HttpFixture, WhoisFixture, local_collectors_config


@pytest.fixture(params=["falkordb", "neo4j"])
async def graph_store(request: pytest.FixtureRequest, falkordb_server: FalkorDB) -> AsyncIterator[CypherGraphStore]:
    """A fresh, empty graph per test, on each backend the conformance suite covers."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    store: CypherGraphStore
    if request.param == "neo4j":
        uri = os.environ.get("NEO4J_URI", "")
        if not uri:
            pytest.skip("Neo4j conformance runs when NEO4J_URI (and NEO4J_USER/NEO4J_PASSWORD) are set")
        auth = (os.environ.get("NEO4J_USER", "neo4j"), os.environ.get("NEO4J_PASSWORD", ""))
        async with neo4j.AsyncGraphDatabase.driver(uri, auth=auth) as driver:
            await driver.execute_query("MATCH (e:Entity) DETACH DELETE e")  # the suite owns this database
        store = Neo4jGraphStore(uri, *auth)
    else:
        store = FalkorGraphStore(falkordb_server.host, falkordb_server.port, falkordb_server.password, name)
    await store.ensure_schema()
    yield store
    if isinstance(store, FalkorGraphStore):
        await store.delete_graph()
    await store.close()


@pytest.fixture(scope="session")
def observations_dsn(postgres_server: Postgres) -> str:
    migrate(postgres_server.dsn)
    return postgres_server.dsn


@pytest_asyncio.fixture
async def observation_store(observations_dsn: str) -> AsyncIterator[ObservationStore]:
    store = ObservationStore(observations_dsn)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def collectors_config(dns_fixture: DnsFixture, http_fixture: HttpFixture, whois_fixture: WhoisFixture) -> CollectorsConfig:
    """Every external base URL, resolver and server points at a local fixture."""
    return local_collectors_config(dns_fixture, http_fixture, whois_fixture)


@pytest_asyncio.fixture
async def collection(collectors_config: CollectorsConfig, falkordb_server: FalkorDB,
                     observation_store: ObservationStore) -> AsyncIterator[Collection]:
    graph = FalkorGraphStore(falkordb_server.host, falkordb_server.port, falkordb_server.password,
                             f"test-{uuid.uuid4().hex[:10]}")
    await graph.ensure_schema()
    fetcher = Fetcher(collectors_config.fetch)
    yield Collection(load_collectors(collectors_config), fetcher, graph, observation_store)
    await fetcher.close()
    await graph.delete_graph()
    await graph.close()


# The service's graph query timeout in these tests: short, so the cost-bound tests stay short.
SERVICE_QUERY_TIMEOUT_MS = 1000


@dataclass
class ServiceUnderTest:
    servicer: Collectors
    client: CollectorsClient
    graph: FalkorGraphStore  # the servicer's own store, for checks the RPCs do not answer


@pytest_asyncio.fixture
async def collectors_service(nats_server: NatsServer, observations_dsn: str,
                             falkordb_server: FalkorDB) -> AsyncIterator[ServiceUnderTest]:
    """The collectors servicer on NATS over a graph of its own (dropped afterwards), and a client."""
    config = CollectorsConfig.model_validate({"graph": {"name": f"svc-{uuid.uuid4().hex[:10]}",
                                                        "query_timeout_ms": SERVICE_QUERY_TIMEOUT_MS}})
    secrets = {
        "postgres": {"dsn": observations_dsn},
        "falkordb": {"host": falkordb_server.host, "port": str(falkordb_server.port),
                     "password": falkordb_server.password},
    }
    servicer = await assemble(InstanceInfo(service="collectors"), config, lambda name: secrets[name])
    graph = servicer.collection.graph
    assert isinstance(graph, FalkorGraphStore)
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=120, max_concurrency=8) as nc:
        yield ServiceUnderTest(servicer, CollectorsClient.over_nats(nc), graph)
        await graph.delete_graph()
