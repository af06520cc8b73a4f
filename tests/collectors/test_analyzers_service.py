"""The analyzers behind the collectors service and the gateway: a file uploaded to POST /api/v1/files
is quarantined and analysed over the AnalyzeFile RPC, analysed again by its hash with Collect, and
refused with a clear status when it is empty, too large or labelled above the key's TLP; the social
and geo collectors answer through the generic collect route."""

from __future__ import annotations

import hashlib
import json
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.engines import FalkorDB, NatsServer, Postgres, Redis
from bev.rpc import InstanceInfo, RpcError, StatusCode
from bev.testing.serving import serving_on_nats
from bev.vocab import Tlp
from services.collectors.samples import minimal_pe
from services.collectors.servicer import assemble
from services.collectors.settings import CollectorsConfig, FetchConfig
from services.collectors.testing import DnsFixture
from services.gateway.testing import GatewayUnderTest, gateway_on_free_port

MAX_FILE = 64 * 1024  # the service's limit here, under the gateway's upload limit


@pytest_asyncio.fixture
async def stack(nats_server: NatsServer, postgres_server: Postgres, falkordb_server: FalkorDB, redis_server: Redis,
                fresh_database: Callable[[], str], dns_fixture: DnsFixture,
                tmp_path: Path) -> AsyncIterator[tuple[CollectorsClient, GatewayUnderTest, Path]]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "family.yar").write_text(
        'rule Marker { meta: malware = "Glasswing" strings: $m = "GLASSWING-CONFIG" condition: $m }\n')
    quarantine = tmp_path / "quarantine"
    config = CollectorsConfig(
        fetch=FetchConfig(allow_ranges=["127.0.0.0/8"], nameservers=[dns_fixture.nameserver],
                          per_domain_rate_per_s=1000, tor_socks_url=""),
        malware={"quarantine_dir": quarantine, "max_file_bytes": MAX_FILE, "rules_dirs": [rules]},
        graph={"name": f"analyzers-{uuid.uuid4().hex[:8]}"})
    secrets = {"postgres": {"dsn": postgres_server.dsn},
               "falkordb": {"host": falkordb_server.host, "port": str(falkordb_server.port),
                            "password": falkordb_server.password}}
    servicer = await assemble(InstanceInfo(service="collectors"), config, lambda name: secrets[name])
    async with serving_on_nats(servicer, nats_server.url, default_timeout_s=60) as nc, \
            gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway:
        yield CollectorsClient.over_nats(nc, timeout_s=60), gateway, quarantine
        await servicer.collection.graph.delete_graph()  # type: ignore[attr-defined]


async def test_an_uploaded_file_is_quarantined_analysed_and_linked(
        stack: tuple[CollectorsClient, GatewayUnderTest, Path]) -> None:
    client, gateway, quarantine = stack
    sample = minimal_pe([b"GLASSWING-CONFIG", b"beacon hxxp://c2.glasswing[.]example[.]com/gate 198.51.100.77"])
    sha256 = hashlib.sha256(sample).hexdigest()
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=60) as http:
        answer = await http.post("/api/v1/files", content=sample, params={"filename": "invoice.exe", "tlp": "amber"},
                                 headers={"content-type": "application/octet-stream"})
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert found["sha256"] == sha256 and found["size"] == len(sample)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for obs in found["observations"]:
            by_type.setdefault(obs["entity"]["type"], []).append(obs)
        sample_obs = next(o for o in by_type["file"] if o["entity"]["value"] == sha256)
        properties = json.loads(sample_obs["entity"]["properties_json"])
        assert properties["hashes"]["MD5"] == hashlib.md5(sample).hexdigest()
        assert properties["hashes"]["SHA-256"] == sha256 and properties["name"] == "invoice.exe"
        assert {o["entity"]["value"] for o in by_type["malware"]} == {"Glasswing"}
        assert "c2.glasswing.example.com" in {o["entity"]["value"] for o in by_type["domain-name"]}
        assert {o["tlp"] for o in found["observations"]} == {"amber"}

        kept = quarantine / sha256
        assert kept.read_bytes() == sample
        assert not stat.S_IMODE(kept.stat().st_mode) & 0o111  # never executable

        # Analysed again by its hash (new rules, another look): the same observations.
        again = [obs async for obs in client.Collect(collectors_pb2.CollectRequest(
            collector="malware", target_type="file", target=sha256.upper(), tlp=Tlp.AMBER.to_proto()))]
        assert {o.id for o in again} >= {sample_obs["id"]}

        empty = await http.post("/api/v1/files", content=b"", headers={"content-type": "application/octet-stream"})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
        huge = await http.post("/api/v1/files", content=b"x" * (4 * 1024 * 1024),
                               headers={"content-type": "application/octet-stream"})
        assert huge.status_code == 413 and "bytes" in huge.json()["error"]  # the gateway's upload limit
        over = await http.post("/api/v1/files", content=b"x" * (MAX_FILE + 1),
                               headers={"content-type": "application/octet-stream"})
        assert over.status_code == 413 and f"the limit is {MAX_FILE}" in over.json()["error"]  # the service's
        reader = await gateway.new_key(["read", "write"], "team-green", max_tlp=Tlp.GREEN)
        above = await http.post("/api/v1/files", content=sample, params={"tlp": "red"},
                                headers={**gateway.auth(reader), "content-type": "application/octet-stream"})
        assert above.status_code == 403 and "TLP:GREEN" in above.json()["error"]


async def test_analysis_refusals_are_clear(stack: tuple[CollectorsClient, GatewayUnderTest, Path]) -> None:
    client = stack[0]
    with pytest.raises(RpcError) as too_big:
        await anext(aiter(client.AnalyzeFile(collectors_pb2.AnalyzeFileRequest(content=b"z" * (MAX_FILE + 1)))))
    assert too_big.value.code == StatusCode.RESOURCE_EXHAUSTED and str(MAX_FILE) in too_big.value.message
    with pytest.raises(RpcError) as unknown:
        await anext(aiter(client.Collect(collectors_pb2.CollectRequest(
            collector="malware", target_type="file", target="ab" * 32))))
    assert unknown.value.code == StatusCode.INVALID_ARGUMENT and "quarantine" in unknown.value.message
    with pytest.raises(RpcError) as not_a_hash:
        await anext(aiter(client.Collect(collectors_pb2.CollectRequest(
            collector="malware", target_type="file", target="../../etc/passwd"))))
    assert not_a_hash.value.code == StatusCode.INVALID_ARGUMENT


async def test_geo_answers_through_the_collect_route(stack: tuple[CollectorsClient, GatewayUnderTest, Path]) -> None:
    gateway = stack[1]
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=60) as http:
        answer = await http.post("/api/v1/collectors/geo/collect", json={
            "target_type": "note", "target": "The courier met them at 48.8584, 2.2945, then took a train to Berlin."})
        assert answer.status_code == 200, answer.text
        locations = {o["entity"]["value"]: json.loads(o["entity"]["properties_json"])
                     for o in answer.json()["observations"] if o["entity"]["type"] == "location"}
        assert locations["48.8584,2.2945"]["country"] == "FR"
        assert any(p.get("city") == "Berlin" or "Berlin" in str(p.get("name")) for p in locations.values())
