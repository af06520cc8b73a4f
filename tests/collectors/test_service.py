"""Collectors RPCs over NATS and the gateway's graph and collector routes, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from stix2validator import ValidationOptions, validate_instance

from bev.collectors.v1 import collectors_pb2
from bev.common.v1 import common_pb2
from bev.engines import FalkorDB, Postgres, free_port
from bev.rpc import RpcError, StatusCode
from bev.runtime import StartupError
from services.collectors.observables import Observable
from services.collectors.servicer import open_collection
from services.collectors.settings import CollectorsConfig
from services.collectors.testing import HttpFixture
from tests.collectors.conftest import CollectorsStack

BLOG = Path(__file__).parents[2] / "services" / "collectors" / "tests" / "data" / "threat-blog.html"


async def _collect_blog(stack: CollectorsStack, http_fixture: HttpFixture) -> list[collectors_pb2.Observation]:
    url = http_fixture.serve("/svc/glass-harbor.html", BLOG.read_bytes())
    request = collectors_pb2.CollectRequest(collector="web", target_type="url", target=url,
                                            investigation_id="inv-svc", tlp=common_pb2.TLP_GREEN)
    return [obs async for obs in stack.client.Collect(request)]


async def test_collect_streams_stored_observations_and_export_validates(
        collectors_stack: CollectorsStack, http_fixture: HttpFixture) -> None:
    observations = await _collect_blog(collectors_stack, http_fixture)
    assert len(observations) > 10
    assert {o.collector for o in observations} == {"web"} and {o.tlp for o in observations} == {common_pb2.TLP_GREEN}
    page_id = observations[0].entity.id
    again = await _collect_blog(collectors_stack, http_fixture)
    assert [o.id for o in again] == [o.id for o in observations]  # a rerun is the same observations

    export = await collectors_stack.client.ExportStix(collectors_pb2.ExportStixRequest(entity_ids=[page_id], depth=1))
    bundle = json.loads(export.bundle_json)
    assert export.objects == len(bundle["objects"]) > 10
    assert {"url", "ipv4-addr", "vulnerability", "relationship", "x-crypto-address"} <= {o["type"] for o in bundle["objects"]}
    result = validate_instance(bundle, ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for e in result.errors]


async def test_graph_rpcs_refuse_bad_input(collectors_stack: CollectorsStack, http_fixture: HttpFixture) -> None:
    client = collectors_stack.client
    await _collect_blog(collectors_stack, http_fixture)
    with pytest.raises(RpcError) as bad_collector:
        await anext(aiter(client.Collect(collectors_pb2.CollectRequest(collector="nope", target_type="url", target="x"))))
    assert bad_collector.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(RpcError) as refused:
        await anext(aiter(client.Collect(collectors_pb2.CollectRequest(
            collector="web", target_type="url", target="http://169.254.169.254/latest/meta-data/"))))
    assert refused.value.code == StatusCode.PERMISSION_DENIED and "169.254.169.254" in refused.value.message
    with pytest.raises(RpcError) as write:
        await client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher="CREATE (:Entity {id: 'x'})"))
    assert write.value.code == StatusCode.INVALID_ARGUMENT
    with pytest.raises(RpcError) as deep:
        await client.Neighborhood(collectors_pb2.NeighborhoodRequest(entity_id="url--x", depth=9))
    assert deep.value.code == StatusCode.INVALID_ARGUMENT
    rows = await client.GraphQuery(collectors_pb2.GraphQueryRequest(
        cypher="MATCH (e:Entity) WHERE e.type = $t RETURN e.value", params_json='{"t": "ipv4-addr"}', limit=5))
    assert [json.loads(r) for r in rows.rows_json] == [["203.0.113.45"]]


async def test_gateway_routes(collectors_stack: CollectorsStack, http_fixture: HttpFixture) -> None:
    await _collect_blog(collectors_stack, http_fixture)
    ip = Observable("ipv4-addr", "203.0.113.45")
    gateway = collectors_stack.gateway
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30) as http:
        listed = (await http.get("/api/v1/collectors")).json()["collectors"]
        assert {"dns", "web", "feed", "taxii", "bitcoin", "ethereum", "whois", "tor", "document"} <= {c["name"] for c in listed}
        tor = next(c for c in listed if c["name"] == "tor")
        assert tor["needs_tor"] and tor["consumes"] == ["url"]

        entity = await http.get(f"/api/v1/graph/entities/{ip.id}")
        assert entity.status_code == 200 and entity.json()["value"] == "203.0.113.45"
        assert (await http.get("/api/v1/graph/entities/ipv4-addr--00000000-0000-5000-8000-000000000000")).status_code == 404
        assert (await http.get("/api/v1/graph/entities/not-an-id")).status_code == 400

        near = (await http.get("/api/v1/graph/neighborhood", params={"entity_id": ip.id, "depth": 2})).json()
        assert ip.id in {e["id"] for e in near["entities"]} and near["relations"]
        # Past the bound the gateway's schema states (1..3): refused there, 422 naming the parameter.
        too_deep = await http.get("/api/v1/graph/neighborhood", params={"entity_id": ip.id, "depth": 7})
        assert too_deep.status_code == 422 and "depth" in too_deep.json()["error"]

        extracted = (await http.post("/api/v1/indicators/extract", json={
            "text": "mail ops@evil.org, call +1 415-555-0134, C2 hxxp://evil[.]org/a", "scrub_pii": True})).json()
        assert "[EMAIL]" in extracted["scrubbed_text"] and "[PHONE]" in extracted["scrubbed_text"]
        found = {(i["type"], i["value"]) for i in extracted["indicators"]}
        assert ("email", "ops@evil.org") not in found and ("url", "http://evil.org/a") in found

        collected = await http.post("/api/v1/collectors/web/collect", json={"target_type": "url", "target": "ftp://x/"})
        assert collected.status_code == 403
        feed = http_fixture.serve("/svc/feed.rss", (BLOG.parent / "feed.rss").read_bytes(), "application/rss+xml")
        collected = await http.post("/api/v1/collectors/feed/collect",
                                    json={"target_type": "url", "target": feed, "tlp": "TLP:GREEN"})
        assert collected.status_code == 200
        assert "198.51.100.77" in {o["entity"]["value"] for o in collected.json()["observations"]}
        assert {o["tlp"] for o in collected.json()["observations"]} == {"green"}  # labels, not TLP_GREEN
        bad_tlp = await http.post("/api/v1/collectors/feed/collect",
                                  json={"target_type": "url", "target": feed, "tlp": "purple"})
        assert bad_tlp.status_code == 400 and "clear, green, amber, amber+strict, red" in bad_tlp.json()["error"]
        queried = await http.post("/api/v1/graph/query", json={
            "cypher": "MATCH (e:Entity {type: $t}) RETURN e.value ORDER BY e.value", "params": {"t": "vulnerability"}})
        assert queried.json()["rows"] == [["CVE-2025-21298"], ["CVE-2026-1234"]]
        assert (await http.post("/api/v1/graph/query", json={"cypher": "MATCH (e) DELETE e"})).status_code == 400
        exported = await http.post("/api/v1/graph/export", json={"entity_ids": [ip.id], "depth": 1})
        assert exported.status_code == 200 and exported.json()["type"] == "bundle"


async def test_unreachable_stores_fail_the_start_with_one_line(postgres_server: Postgres,
                                                               falkordb_server: FalkorDB) -> None:
    closed = free_port()
    falkordb = {"host": "127.0.0.1", "port": str(falkordb_server.port), "password": falkordb_server.password}
    cases = [
        ({"postgres": {"dsn": postgres_server.dsn}, "falkordb": {**falkordb, "port": str(closed)}},
         f"cannot reach FalkorDB at 127.0.0.1:{closed}"),
        ({"postgres": {"dsn": f"postgresql://bev@127.0.0.1:{closed}/bev?connect_timeout=2"}, "falkordb": falkordb},
         "cannot reach PostgreSQL"),
    ]
    for secrets, expected in cases:
        with pytest.raises(StartupError) as failed:
            await open_collection(CollectorsConfig(), lambda name, s=secrets: s[name])  # type: ignore[misc]
        assert expected in str(failed.value) and "\n" not in str(failed.value)


async def test_extract_keeps_idns_whole_and_flags_homoglyphs(collectors_stack: CollectorsStack) -> None:
    gateway = collectors_stack.gateway
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=30, trust_env=False) as http:
        response = await http.post("/api/v1/indicators/extract",
                                   json={"text": "login at ex\u0430mple.com or пример.рф today"})
    assert response.status_code == 200, response.text
    found = {i["unicode_value"] or i["value"]: i for i in response.json()["indicators"] if i["type"] == "domain"}
    spoof = found["ex\u0430mple.com"]
    assert spoof["value"].startswith("xn--") and spoof["value"].endswith(".com")  # whole, not "mple.com"
    assert spoof["homoglyph"]["mixed_script"] and spoof["homoglyph"]["skeleton"] == "example.com"
    assert spoof["homoglyph"]["scripts"] == ["Cyrillic", "Latin"]
    assert found["пример.рф"]["value"] == "xn--e1afmkfd.xn--p1ai" and "homoglyph" not in found["пример.рф"]
