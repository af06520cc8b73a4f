"""The demo world end to end: the real collectors service (over NATS, on real engines), configured only
from DemoWorld.collectors_config(), investigates the world's target as a playbook would. What it stored
is scored against the world's ground truth, and two independent records show that nothing left the
world: the world's own request log, and every socket connection this process opened meanwhile (a
Python audit hook, which sees the collectors' connections without any code path of theirs changing).
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.engines import FalkorDB, NatsServer, Postgres
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.testing.serving import serving_on_nats
from services.collectors.observables import Observable
from services.collectors.servicer import assemble
from services.collectors.settings import CollectorsConfig, Settings
from services.swarm.demo import DemoWorld

INVESTIGATION = "demo-world"
METADATA = "169.254.169.254"


# --- what this process connects to ---------------------------------------------------------------

_connections: list[tuple[str, str, Any]] | None = None  # (event, thread, address) while auditing
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _connections is not None and event in ("socket.connect", "socket.sendto", "socket.getaddrinfo"):
        address = args[1] if event != "socket.getaddrinfo" else args[:2]
        _connections.append((event, threading.current_thread().name, address))


@contextmanager
def audited_connections() -> Iterator[list[tuple[str, str, Any]]]:
    """Every connect / sendto / getaddrinfo of this process (any thread) inside the block."""
    global _connections, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside this block
        _hook_installed = True
    seen: list[tuple[str, str, Any]] = []
    _connections = seen
    try:
        yield seen
    finally:
        _connections = None


# --- the stack -----------------------------------------------------------------------------------

@dataclass
class DemoStack:
    world: DemoWorld
    config: CollectorsConfig
    client: CollectorsClient


@pytest_asyncio.fixture
async def demo_stack(nats_server: NatsServer, postgres_server: Postgres,
                     falkordb_server: FalkorDB) -> AsyncIterator[DemoStack]:
    with DemoWorld() as world:
        config = CollectorsConfig.model_validate(
            {**world.collectors_config(), "graph": {"name": f"demo-{uuid.uuid4().hex[:8]}"}})
        secrets = {
            "postgres": {"dsn": postgres_server.dsn},
            "falkordb": {"host": falkordb_server.host, "port": str(falkordb_server.port),
                         "password": falkordb_server.password},
        }
        servicer = await assemble(InstanceInfo(service="collectors"), config, lambda name: secrets[name])
        async with serving_on_nats(servicer, nats_server.url, default_timeout_s=60, max_concurrency=16) as nc:
            yield DemoStack(world, config, CollectorsClient.over_nats(nc, timeout_s=60))
            await servicer.collection.graph.delete_graph()  # type: ignore[attr-defined]


# --- a playbook, as the swarm's collector role would run it ------------------------------------

@dataclass
class Investigation:
    client: CollectorsClient
    world: DemoWorld
    observations: list[collectors_pb2.Observation] = field(default_factory=list)
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # (collector, target) -> why
    done: set[tuple[str, str]] = field(default_factory=set)

    async def collect(self, collector: str, target_type: str, target: str) -> list[collectors_pb2.Observation]:
        if (collector, target) in self.done:
            return []
        self.done.add((collector, target))
        request = collectors_pb2.CollectRequest(collector=collector, target_type=target_type, target=target,
                                                investigation_id=INVESTIGATION)
        try:
            found = [obs async for obs in self.client.Collect(request)]
        except RpcError as exc:  # a refusal (robots.txt, content type, the SSRF guard) is a finding too
            self.refused[(collector, target)] = f"{exc.code.name}: {exc.message}"
            return []
        self.observations += found
        return found

    def entities(self, kind: str) -> list[str]:
        return list(dict.fromkeys(o.entity.value for o in self.observations if o.entity.type == kind))

    def links_from(self, found: list[collectors_pb2.Observation]) -> list[str]:
        """URLs a page links to or names, that the world serves (the in-scope pivots)."""
        return [o.entity.value for o in found if o.entity.type == "url" and self.world.served(o.entity.value)]

    async def crawl(self, start: list[str], max_pages: int = 12) -> None:
        queue = list(start)
        while queue and len([d for d in self.done if d[0] == "web"]) < max_pages:
            url = queue.pop(0)
            if ("web", url) not in self.done:
                queue += self.links_from(await self.collect("web", "url", url))


async def investigate(stack: DemoStack) -> Investigation:
    world, config = stack.world, stack.config
    run = Investigation(stack.client, world)
    kind, target = world.target
    assert kind == "domain-name"
    await run.collect("dns", kind, target)
    await run.collect("whois", kind, target)
    await run.crawl([value for seed_kind, value in world.seeds if seed_kind == "url"])
    for feed in config.feeds:  # the sources the beat would poll
        await run.crawl(run.links_from(await run.collect("feed", "url", feed.url)))
    for source in config.taxii:
        await run.collect("taxii", "url", source.url)
    # WHOIS for the hosts the target's own pages send visitors to (the payload mirror).
    linked = {urlsplit(o.entity.value).hostname or "" for o in run.observations
              if o.collector == "web" and urlsplit(o.source).hostname == target
              and any(r.type == "links-to" for r in o.relations)}
    for host in sorted(linked - {"", target}):
        await run.collect("whois", "domain-name", host)
    for wallet in [w for w in run.entities("x-crypto-address") if not w.startswith("0x")]:
        await run.collect("bitcoin", "x-crypto-address", wallet)
        break  # one trace from the first wallet found covers the flow (depth 2)
    for domain in run.entities("domain-name"):
        await run.collect("dns", "domain-name", domain)
    return run


async def stored_graph(client: CollectorsClient) -> tuple[set[tuple[str, str]], set[tuple[str, str, str]]]:
    async def rows(cypher: str) -> list[list[Any]]:
        answer = await client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher=cypher, limit=1000))
        assert not answer.truncated
        return [json.loads(row) for row in answer.rows_json]

    entities = {(t, v) for t, v in await rows("MATCH (e:Entity) RETURN e.type, e.value")}
    relations = {(s, t, d) for s, t, d in await rows("MATCH (a:Entity)-[r:REL]->(b:Entity) RETURN a.value, r.type, b.value")}
    return entities, relations


async def test_an_investigation_of_the_demo_world_finds_the_case_and_stays_inside(demo_stack: DemoStack) -> None:
    world = demo_stack.world
    truth = world.ground_truth()
    with audited_connections() as connections:
        run = await investigate(demo_stack)
        # An agent that obeyed the planted injection would ask for the metadata URL: the guard refuses it.
        with pytest.raises(RpcError) as obeyed:
            await anext(aiter(demo_stack.client.Collect(collectors_pb2.CollectRequest(
                collector="web", target_type="url", target=f"http://{METADATA}/latest/meta-data/iam/security-credentials/",
                investigation_id=INVESTIGATION))))
        assert obeyed.value.code == StatusCode.PERMISSION_DENIED

    # Recall, from what the collectors stored in the graph.
    entities, relations = await stored_graph(demo_stack.client)
    recall = truth.recall(entities, relations)
    print(f"demo world: entity recall {recall.entities:.2f} ({len(truth.entities)}), "
          f"relation recall {recall.relations:.2f} ({len(truth.relations)}); "
          f"{len(run.observations)} observations, {len(entities)} entities, {len(relations)} relations stored")
    assert recall.entities >= 0.9, sorted(recall.missing_entities)
    assert recall.relations >= 0.8, sorted(recall.missing_relations)
    target = Observable(*truth.target)
    entity = await demo_stack.client.GetEntity(collectors_pb2.GetEntityRequest(id=target.id))
    assert entity.value == truth.target[1]
    # The injection was read as text (its URL is evidence on the page), never acted on.
    assert ("url", f"http://{METADATA}/latest/meta-data/iam/security-credentials/") in entities

    # The world's log: every request was about the world's names, none asked for what robots.txt
    # disallows, and the web hosts were reached at the addresses their names resolve to.
    log = world.requests
    assert {r.protocol for r in log} == {"dns", "http", "whois"}
    assert world.outside() == [], [str(r) for r in world.outside()]
    requested = [world.url(r.name, r.asked.split(" ", 1)[1]) for r in log if r.protocol == "http"]
    assert not [url for url in requested if url.startswith(truth.never_requested)]
    assert ("web", world.url("research.example.org", "/drafts/glass-mantis-attribution.html")) in run.refused
    assert {r.local.rsplit(":", 1)[0] for r in log if r.protocol == "http"} <= {
        world.world.site_address(name) for name in world.web_hosts}
    assert not [r for r in log if r.name in truth.never_contacted and r.protocol != "dns"]

    # This process's sockets: nothing but loopback; into the world's block only its servers. Nothing
    # ever named the metadata address.
    world_endpoints = {(world.world.site_address(name), world.port) for name in world.web_hosts}
    world_endpoints |= {(world.world.dns_address, world.dns_port), (world.world.whois_address, world.whois_port)}
    block = world.world.block
    for event, thread, address in connections:
        assert METADATA not in str(address), (event, address)
        if event == "socket.getaddrinfo" or thread.startswith("demo-world"):
            continue  # a lookup is not a connection; the world's DNS server answers its clients
        host, port = str(address[0]), int(address[1])
        ip = ipaddress.ip_address(host)
        assert ip.is_loopback, (event, address)
        if ip in block:
            assert (host, port) in world_endpoints, (event, address)
        # Outside the block: this stack's engines, or another session fixture's background
        # connection on loopback (the audit hook sees every thread of the process); never the world
        # through an address it was not served on, never off the machine (is_loopback above).
    assert any(ipaddress.ip_address(str(a[0])) in block for e, _, a in connections if e == "socket.connect")


def test_the_environment_variables_configure_the_same_collectors(monkeypatch: pytest.MonkeyPatch) -> None:
    with DemoWorld() as world:
        for name, value in world.collectors_env().items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        from_env = settings.collectors
        expected = CollectorsConfig.model_validate(world.collectors_config())
        # The quarantine defaults into the service's data directory, which only Settings knows.
        assert from_env.malware.quarantine_dir == settings.data_dir / "quarantine"
        expected.malware.quarantine_dir = from_env.malware.quarantine_dir
        assert from_env == expected
        assert from_env.fetch.allow_ranges == ["127.77.0.0/24"] and from_env.fetch.tor_socks_url == ""
        assert from_env.feeds[0].url.startswith("http://research.example.org:")
