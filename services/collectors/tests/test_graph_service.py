"""The graph RPCs through the served servicer: TLP ceilings on GetEntity, Neighborhood and ExportStix,
GraphQuery's clearance and its engine-enforced bounds, and ImportStix."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from bev.collectors.v1 import collectors_pb2
from bev.common.v1 import common_pb2
from bev.rpc import RpcError, StatusCode
from services.collectors.observables import Observable
from services.collectors.servicer import RAW_QUERY_REFUSED
from services.collectors.tests.conftest import SERVICE_QUERY_TIMEOUT_MS, ServiceUnderTest

STAMP = {"spec_version": "2.1", "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z"}
# Slack over the query timeout for the engine to notice it and answer, on a loaded 2-core machine.
SLACK_S = 1.5

GROUP = Observable("intrusion-set", "Glass Harbor")
PHISHING = Observable("attack-pattern", "Phishing")
LOADER = Observable("malware", "HarborLoader")
TRANSFER = Observable("attack-pattern", "Ingress Tool Transfer")
REEF = Observable("intrusion-set", "Silent Reef")


def _sdo(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, **STAMP, "id": f"{kind}--{uuid.uuid5(uuid.NAMESPACE_URL, name)}", "name": name, **extra}


def _uses(source: dict[str, Any], target: dict[str, Any], kind: str = "uses") -> dict[str, Any]:
    return {"type": "relationship", **STAMP, "id": f"relationship--{uuid.uuid4()}", "relationship_type": kind,
            "source_ref": source["id"], "target_ref": target["id"]}


def _bundle(*objects: dict[str, Any]) -> str:
    return json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(objects)})


async def _import(service: ServiceUnderTest, tlp: common_pb2.Tlp.ValueType, *objects: dict[str, Any],
                  source: str = "https://intel.example/harbor.json") -> collectors_pb2.ImportStixResponse:
    return await service.client.ImportStix(collectors_pb2.ImportStixRequest(
        bundle_json=_bundle(*objects), source=source, tlp=tlp))


def _access(tlp: common_pb2.Tlp.ValueType) -> common_pb2.Access:
    return common_pb2.Access(team="t", max_tlp=tlp, key_id="k-test")


async def _seed_labelled(service: ServiceUnderTest) -> None:
    """Glass Harbor uses Phishing (clear); it also uses HarborLoader, which uses Ingress Tool Transfer
    (amber); Ingress Tool Transfer alone was also reported green; HarborLoader is tied to Silent Reef (red)."""
    group, phishing = _sdo("intrusion-set", "Glass Harbor"), _sdo("attack-pattern", "Phishing")
    loader, transfer = _sdo("malware", "HarborLoader", is_family=True), _sdo("attack-pattern", "Ingress Tool Transfer")
    reef = _sdo("intrusion-set", "Silent Reef")
    await _import(service, common_pb2.TLP_CLEAR, group, phishing, _uses(group, phishing))
    await _import(service, common_pb2.TLP_AMBER, group, loader, transfer, _uses(group, loader), _uses(loader, transfer))
    await _import(service, common_pb2.TLP_GREEN, transfer)
    await _import(service, common_pb2.TLP_RED, loader, reef, _uses(reef, loader))


async def test_get_entity_hides_what_is_above_the_ceiling_as_absent(collectors_service: ServiceUnderTest) -> None:
    await _seed_labelled(collectors_service)
    client = collectors_service.client
    green = _access(common_pb2.TLP_GREEN)

    group = await client.GetEntity(collectors_pb2.GetEntityRequest(id=GROUP.id, access=green))
    assert group.value == "Glass Harbor" and group.tlp == common_pb2.TLP_CLEAR  # the least restrictive sighting
    transfer = await client.GetEntity(collectors_pb2.GetEntityRequest(id=TRANSFER.id, access=green))
    assert transfer.tlp == common_pb2.TLP_GREEN  # amber first, then green: it reads green

    with pytest.raises(RpcError) as hidden:
        await client.GetEntity(collectors_pb2.GetEntityRequest(id=LOADER.id, access=green))
    unknown_id = Observable("malware", "Never Seen").id
    with pytest.raises(RpcError) as unknown:
        await client.GetEntity(collectors_pb2.GetEntityRequest(id=unknown_id, access=green))
    assert hidden.value.code == unknown.value.code == StatusCode.NOT_FOUND
    assert hidden.value.message == f"no entity {LOADER.id}" and unknown.value.message == f"no entity {unknown_id}"

    loader = await client.GetEntity(collectors_pb2.GetEntityRequest(id=LOADER.id, access=_access(common_pb2.TLP_AMBER)))
    assert loader.tlp == common_pb2.TLP_AMBER
    reef = await client.GetEntity(collectors_pb2.GetEntityRequest(id=REEF.id))  # no ceiling: every label
    assert reef.tlp == common_pb2.TLP_RED
    with pytest.raises(RpcError) as above_amber:
        await client.GetEntity(collectors_pb2.GetEntityRequest(id=REEF.id, access=_access(common_pb2.TLP_AMBER_STRICT)))
    assert above_amber.value.code == StatusCode.NOT_FOUND


async def test_neighborhood_reaches_only_through_what_the_caller_may_see(collectors_service: ServiceUnderTest) -> None:
    await _seed_labelled(collectors_service)
    client = collectors_service.client

    async def around(entity_id: str, tlp: common_pb2.Tlp.ValueType) -> collectors_pb2.Subgraph:
        return await client.Neighborhood(collectors_pb2.NeighborhoodRequest(
            entity_id=entity_id, depth=2, limit=100, access=_access(tlp)))

    green = await around(GROUP.id, common_pb2.TLP_GREEN)
    # Ingress Tool Transfer is green, but the only way to it is through the amber HarborLoader.
    assert {e.value for e in green.entities} == {"Glass Harbor", "Phishing"}
    assert [(r.type, r.tlp) for r in green.relations] == [("uses", common_pb2.TLP_CLEAR)]

    amber = await around(GROUP.id, common_pb2.TLP_AMBER)
    assert {e.value for e in amber.entities} == {"Glass Harbor", "Phishing", "HarborLoader", "Ingress Tool Transfer"}
    assert len(amber.relations) == 3 and all(r.tlp <= common_pb2.TLP_AMBER for r in amber.relations)

    everything = await client.Neighborhood(collectors_pb2.NeighborhoodRequest(entity_id=LOADER.id, depth=1))
    assert "Silent Reef" in {e.value for e in everything.entities}
    assert common_pb2.TLP_RED in {r.tlp for r in everything.relations}

    with pytest.raises(RpcError) as hidden_start:
        await around(LOADER.id, common_pb2.TLP_GREEN)
    assert hidden_start.value.code == StatusCode.NOT_FOUND and hidden_start.value.message == f"no entity {LOADER.id}"


async def test_export_stix_leaves_out_what_is_above_the_ceiling(collectors_service: ServiceUnderTest) -> None:
    await _seed_labelled(collectors_service)
    client = collectors_service.client

    export = await client.ExportStix(collectors_pb2.ExportStixRequest(
        entity_ids=[GROUP.id, LOADER.id], depth=1, access=_access(common_pb2.TLP_GREEN)))
    objects = json.loads(export.bundle_json)["objects"]
    assert {o.get("name") for o in objects if o["type"] != "relationship"} == {"Glass Harbor", "Phishing"}
    assert [(o["source_ref"], o["target_ref"]) for o in objects if o["type"] == "relationship"] == [
        (GROUP.id, PHISHING.id)]

    with pytest.raises(RpcError) as hidden:
        await client.ExportStix(collectors_pb2.ExportStixRequest(
            entity_ids=[LOADER.id, REEF.id], depth=1, access=_access(common_pb2.TLP_GREEN)))
    assert hidden.value.code == StatusCode.NOT_FOUND

    amber = await client.ExportStix(collectors_pb2.ExportStixRequest(
        entity_ids=[LOADER.id], depth=1, access=_access(common_pb2.TLP_AMBER)))
    names = {o.get("name") for o in json.loads(amber.bundle_json)["objects"]}
    assert {"HarborLoader", "Glass Harbor", "Ingress Tool Transfer"} <= names and "Silent Reef" not in names


async def test_graph_query_needs_a_key_cleared_for_red(collectors_service: ServiceUnderTest) -> None:
    await _seed_labelled(collectors_service)
    client = collectors_service.client
    cypher = "MATCH (e:Entity) RETURN e.value ORDER BY e.value"
    for tlp in (common_pb2.TLP_CLEAR, common_pb2.TLP_GREEN, common_pb2.TLP_AMBER, common_pb2.TLP_AMBER_STRICT):
        with pytest.raises(RpcError) as refused:
            await client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher=cypher, access=_access(tlp)))
        assert refused.value.code == StatusCode.PERMISSION_DENIED and refused.value.message == RAW_QUERY_REFUSED
    for access in (_access(common_pb2.TLP_RED), common_pb2.Access()):
        answer = await client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher=cypher, access=access))
        assert [json.loads(row)[0] for row in answer.rows_json] == [
            "Glass Harbor", "HarborLoader", "Ingress Tool Transfer", "Phishing", "Silent Reef"]
        assert answer.columns == ["e.value"] and not answer.truncated


async def _timed_query(service: ServiceUnderTest, cypher: str, limit: int = 1000) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        answer: Any = await service.client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher=cypher, limit=limit))
    except RpcError as exc:
        answer = exc
    return time.monotonic() - started, answer


async def _answers_promptly(service: ServiceUnderTest) -> None:
    """The engine is not still busy with what came before: a cheap query answers at once."""
    elapsed, answer = await _timed_query(service, "MATCH (e:Entity) RETURN count(e) AS n")
    assert isinstance(answer, collectors_pb2.GraphQueryResponse) and elapsed < 1.0, (elapsed, answer)


async def test_graph_query_rows_and_time_are_bounded_in_the_engine(collectors_service: ServiceUnderTest) -> None:
    rows = [_sdo("attack-pattern", f"Technique {i}") for i in range(150)]
    await _import(collectors_service, common_pb2.TLP_CLEAR, *rows)
    budget_s = SERVICE_QUERY_TIMEOUT_MS / 1000 + SLACK_S

    # 3 million rows: FalkorDB computes them in ~0.3 s but took 17 s to build and send the reply.
    elapsed, answer = await _timed_query(collectors_service, "UNWIND range(1, 3000000) AS x RETURN x")
    assert isinstance(answer, collectors_pb2.GraphQueryResponse) and elapsed < budget_s, elapsed
    assert answer.truncated and [json.loads(r)[0] for r in answer.rows_json] == list(range(1, 1001))
    await _answers_promptly(collectors_service)

    # A cartesian product streams: the LIMIT stops it after the first rows.
    elapsed, answer = await _timed_query(
        collectors_service, "MATCH (a:Entity), (b:Entity), (c:Entity) RETURN a.value, b.value, c.value", limit=10)
    assert isinstance(answer, collectors_pb2.GraphQueryResponse) and elapsed < budget_s, elapsed
    assert answer.truncated and len(answer.rows_json) == 10
    await _answers_promptly(collectors_service)

    # Counting or sorting one (5e8 rows) cannot stream: the timeout stops it.
    for cypher in ("MATCH (a:Entity), (b:Entity), (c:Entity), (d:Entity) RETURN count(*) AS n",
                   "MATCH (a:Entity), (b:Entity), (c:Entity), (d:Entity) RETURN a.value AS v ORDER BY v DESC"):
        elapsed, answer = await _timed_query(collectors_service, cypher)
        assert isinstance(answer, RpcError) and elapsed < budget_s, (elapsed, answer)
        assert answer.code == StatusCode.INVALID_ARGUMENT and "timed out" in answer.message
        await _answers_promptly(collectors_service)

    # Rows up to the limit are not truncated; the limit itself is bounded by graph.max_rows.
    exact = await collectors_service.client.GraphQuery(collectors_pb2.GraphQueryRequest(
        cypher="UNWIND range(1, 5) AS x RETURN x", limit=5))
    assert len(exact.rows_json) == 5 and not exact.truncated
    with pytest.raises(RpcError) as too_many:
        await collectors_service.client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher="RETURN 1", limit=1001))
    assert too_many.value.code == StatusCode.INVALID_ARGUMENT


async def test_graph_query_cannot_close_the_bounding_subquery(collectors_service: ServiceUnderTest) -> None:
    escape = "RETURN 1 AS x } UNWIND range(1, 3000000) AS x RETURN x UNION CALL { RETURN 1 AS x"
    with pytest.raises(RpcError) as refused:
        await collectors_service.client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher=escape))
    assert refused.value.code == StatusCode.INVALID_ARGUMENT and "braces" in refused.value.message
    # Braces inside strings and comments do not count; the query's own maps and subqueries do.
    answer = await collectors_service.client.GraphQuery(collectors_pb2.GraphQueryRequest(
        cypher="WITH {a: '}'} AS m // }\nCALL { RETURN 2 AS y } RETURN m.a AS a, y /* { */;"))
    assert [json.loads(r) for r in answer.rows_json] == [["}", 2]]


async def test_import_stix_is_idempotent_and_counts_what_it_could_not_place(
        collectors_service: ServiceUnderTest) -> None:
    group, phishing = _sdo("intrusion-set", "Glass Harbor"), _sdo("attack-pattern", "Phishing")
    note = {"type": "x-mitre-tactic", **STAMP, "id": f"x-mitre-tactic--{uuid.uuid4()}", "name": "Initial Access"}
    objects = (group, phishing, note, _uses(group, phishing), _uses(group, note, "related-to"))

    first = await _import(collectors_service, common_pb2.TLP_CLEAR, *objects)
    assert (first.objects, first.skipped) == (5, 2)  # the custom object, and the relationship to it
    assert (first.entities, first.relations, first.new_entities, first.new_relations) == (2, 1, 2, 1)
    counts = await collectors_service.graph.counts()

    again = await _import(collectors_service, common_pb2.TLP_CLEAR, *objects)
    assert (again.entities, again.relations, again.new_entities, again.new_relations) == (2, 1, 0, 0)
    assert await collectors_service.graph.counts() == counts == (2, 1)

    stored = await collectors_service.client.GetEntity(collectors_pb2.GetEntityRequest(id=GROUP.id))
    assert stored.type == "intrusion-set" and stored.tlp == common_pb2.TLP_CLEAR


async def test_import_stix_refuses_what_is_not_a_bundle(collectors_service: ServiceUnderTest) -> None:
    client = collectors_service.client
    for text, expected in (("{not json", "not JSON"), ('{"type": "indicator"}', "STIX bundle"),
                           ('{"type": "bundle", "objects": [1]}', "STIX bundle")):
        with pytest.raises(RpcError) as refused:
            await client.ImportStix(collectors_pb2.ImportStixRequest(bundle_json=text))
        assert refused.value.code == StatusCode.INVALID_ARGUMENT and expected in refused.value.message
    invalid = {"type": "relationship", "spec_version": "2.1", "id": "relationship--x"}  # stix2 refuses it
    with pytest.raises(RpcError) as refused:
        await client.ImportStix(collectors_pb2.ImportStixRequest(bundle_json=_bundle(invalid)))
    assert refused.value.code == StatusCode.INVALID_ARGUMENT and "invalid STIX object" in refused.value.message


async def test_graph_query_keeps_the_column_order_of_its_return(collectors_service: ServiceUnderTest) -> None:
    """The bounding subquery's RETURN * sorts columns by name; the answer keeps the query's own order."""
    cases = {
        "RETURN 'z' AS zeta, 'a' AS alpha, 'm' AS mid": (["zeta", "alpha", "mid"], ["z", "a", "m"]),
        "WITH 3 AS c, 1 AS a RETURN DISTINCT c, a // RETURN a, c": (["c", "a"], [3, 1]),
        "UNWIND [2, 1] AS x RETURN x * 10 AS tens, x ORDER BY x LIMIT 1": (["tens", "x"], [10, 1]),
    }
    for cypher, (columns, row) in cases.items():
        answer = await collectors_service.client.GraphQuery(collectors_pb2.GraphQueryRequest(cypher=cypher))
        assert list(answer.columns) == columns, cypher
        assert json.loads(answer.rows_json[0]) == row, cypher
