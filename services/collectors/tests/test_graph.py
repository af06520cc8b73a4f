"""One Cypher conformance suite for every GraphStore backend (FalkorDB here; Neo4j with NEO4J_URI)."""

from __future__ import annotations

import json
import time

import pytest

from bev.vocab import Tlp
from services.collectors.graph import (
    CypherGraphStore,
    EntityRow,
    GraphQueryError,
    RelationRow,
    bounded_subquery,
)
from services.collectors.observables import Observable, Relation

DOMAIN = Observable("domain-name", "evil.example")
IP = Observable("ipv4-addr", "203.0.113.7")
URL = Observable("url", "https://evil.example/gate.php")
RESOLVES = Relation(DOMAIN, IP, "resolves-to", 80)
HOSTS = Relation(URL, DOMAIN, "related-to", 60)


async def _seed(store: CypherGraphStore) -> None:
    await store.upsert([EntityRow.of(o) for o in (DOMAIN, IP, URL)],
                       [RelationRow.of(RESOLVES, ["obs-1"]), RelationRow.of(HOSTS, ["obs-2"])])


async def test_upsert_is_idempotent(graph_store: CypherGraphStore) -> None:
    await _seed(graph_store)
    first = await graph_store.subgraph([DOMAIN.id, IP.id, URL.id], 0, 100)
    await _seed(graph_store)
    again = await graph_store.subgraph([DOMAIN.id, IP.id, URL.id], 0, 100)
    assert await graph_store.counts() == (3, 2)
    assert first == again


async def test_relations_keep_type_the_highest_confidence_and_every_evidence_id(graph_store: CypherGraphStore) -> None:
    await _seed(graph_store)
    await graph_store.upsert([], [RelationRow.of(RESOLVES, ["obs-3"], confidence=95),
                                  RelationRow.of(RESOLVES, ["obs-1"], confidence=10)])
    sub = await graph_store.neighborhood(DOMAIN.id, 1, 10)
    edge = next(r for r in sub.relations if r.id == RESOLVES.id)
    assert (edge.type, edge.confidence, sorted(edge.evidence)) == ("resolves-to", 95, ["obs-1", "obs-3"])
    assert (edge.source_id, edge.target_id) == (DOMAIN.id, IP.id)


async def test_batches_larger_than_the_batch_size(graph_store: CypherGraphStore) -> None:
    graph_store.batch_size = 100
    rows = [EntityRow.of(Observable("ipv4-addr", f"198.51.100.{i % 250}")) for i in range(250)]
    rows += [EntityRow.of(Observable("domain-name", f"host{i}.example")) for i in range(250)]
    await graph_store.upsert(rows)
    assert (await graph_store.counts())[0] == 500


async def test_get_entity_and_neighborhood_depth(graph_store: CypherGraphStore) -> None:
    await _seed(graph_store)
    entity = await graph_store.get_entity(IP.id)
    assert entity is not None and (entity.type, entity.value) == ("ipv4-addr", "203.0.113.7")
    assert await graph_store.get_entity("ipv4-addr--00000000-0000-5000-8000-000000000000") is None
    one_hop = await graph_store.neighborhood(IP.id, 1, 10)
    assert {e.id for e in one_hop.entities} == {IP.id, DOMAIN.id}
    two_hops = await graph_store.neighborhood(IP.id, 2, 10)
    assert {e.id for e in two_hops.entities} == {IP.id, DOMAIN.id, URL.id}
    assert len(two_hops.relations) == 2
    bounded = await graph_store.neighborhood(IP.id, 2, 2)
    assert bounded.truncated and len(bounded.entities) == 2


async def test_query_is_read_only_parameterised_and_bounded(graph_store: CypherGraphStore) -> None:
    await _seed(graph_store)
    result = await graph_store.query("MATCH (e:Entity) WHERE e.type = $type RETURN e.value AS value",
                                     {"type": "domain-name"}, 10)
    assert result.columns == ["value"] and result.rows == [["evil.example"]]
    limited = await graph_store.query("MATCH (e:Entity) RETURN e.id", {}, 2)
    assert len(limited.rows) == 2 and limited.truncated
    with pytest.raises(GraphQueryError):
        await graph_store.query("CREATE (:Entity {id: 'x'})", {}, 10)
    with pytest.raises(GraphQueryError):
        await graph_store.query("MATCH (e:Entity) DETACH DELETE e", {}, 10)
    assert await graph_store.counts() == (3, 2)


async def test_properties_round_trip(graph_store: CypherGraphStore) -> None:
    page = Observable("url", "https://news.example/a", {"title": "Ransomware \"Foo\" — analysis"})
    await graph_store.upsert([EntityRow.of(page)])
    stored = await graph_store.get_entity(page.id)
    assert stored is not None and json.loads(stored.props) == {"title": "Ransomware \"Foo\" — analysis"}


async def test_labels_keep_the_least_restrictive_sighting_and_reads_respect_a_ceiling(
        graph_store: CypherGraphStore) -> None:
    await graph_store.upsert([EntityRow.of(o, Tlp.AMBER) for o in (DOMAIN, IP, URL)],
                             [RelationRow.of(RESOLVES, ["obs-1"], tlp=Tlp.AMBER), RelationRow.of(HOSTS, ["obs-2"], tlp=Tlp.RED)])
    await graph_store.upsert([EntityRow.of(DOMAIN, Tlp.GREEN)])  # seen again, shareable more widely
    await graph_store.upsert([EntityRow.of(DOMAIN, Tlp.RED)])  # a more restrictive sighting changes nothing

    domain = await graph_store.get_entity(DOMAIN.id, Tlp.GREEN)
    assert domain is not None and domain.tlp == Tlp.GREEN
    assert await graph_store.get_entity(IP.id, Tlp.GREEN) is None
    assert await graph_store.get_entity(IP.id, Tlp.AMBER) is not None

    amber = await graph_store.neighborhood(DOMAIN.id, 2, 10, Tlp.AMBER)
    assert {e.id for e in amber.entities} == {DOMAIN.id, IP.id}  # the URL's only edge is red
    assert [(r.id, r.tlp) for r in amber.relations] == [(RESOLVES.id, Tlp.AMBER)]
    everything = await graph_store.neighborhood(DOMAIN.id, 2, 10)
    assert {e.id for e in everything.entities} == {DOMAIN.id, IP.id, URL.id} and len(everything.relations) == 2
    assert (await graph_store.subgraph([IP.id, URL.id], 0, 10, Tlp.GREEN)).entities == []


async def test_rows_written_before_labels_read_as_clear(graph_store: CypherGraphStore) -> None:
    await graph_store._run("CREATE (:Entity {id: $id, type: 'domain-name', value: 'old.example'})",
                           {"id": "domain-name--00000000-0000-5000-8000-0000000000aa"})
    old = await graph_store.get_entity("domain-name--00000000-0000-5000-8000-0000000000aa", Tlp.CLEAR)
    assert old is not None and old.tlp == Tlp.CLEAR
    await graph_store.upsert([EntityRow("domain-name--00000000-0000-5000-8000-0000000000aa", "domain-name",
                                        "old.example", tlp=Tlp.AMBER)])
    again = await graph_store.get_entity("domain-name--00000000-0000-5000-8000-0000000000aa", Tlp.CLEAR)
    assert again is not None and again.tlp == Tlp.CLEAR  # an unlabelled row counted as clear stays clear


async def test_unknown_names_what_the_graph_does_not_hold(graph_store: CypherGraphStore) -> None:
    await _seed(graph_store)
    other = Observable("domain-name", "new.example")
    new_rel = Relation(other, IP, "resolves-to")
    assert await graph_store.unknown([EntityRow.of(o) for o in (DOMAIN, other)],
                                     [RelationRow.of(RESOLVES), RelationRow.of(new_rel)]) == ({other.id}, {new_rel.id})


async def test_query_rows_and_time_are_bounded_in_the_engine(graph_store: CypherGraphStore) -> None:
    graph_store.query_timeout_ms = 1000
    await graph_store.upsert([EntityRow.of(Observable("domain-name", f"host{i}.example")) for i in range(150)])
    budget_s = 1.0 + 1.5

    started = time.monotonic()
    result = await graph_store.query("UNWIND range(1, 3000000) AS x RETURN x", {}, 1000)
    assert time.monotonic() - started < budget_s
    assert result.truncated and len(result.rows) == 1000 and result.rows[-1] == [1000]

    started = time.monotonic()
    with pytest.raises(GraphQueryError, match=r"(?i)timed out|timeout|terminated"):
        await graph_store.query("MATCH (a:Entity), (b:Entity), (c:Entity), (d:Entity) RETURN count(*) AS n", {}, 10)
    assert time.monotonic() - started < budget_s
    started = time.monotonic()
    assert (await graph_store.query("MATCH (e:Entity) RETURN count(e) AS n", {}, 10)).rows == [[150]]
    assert time.monotonic() - started < 0.5  # the engine is not still busy with the query that timed out


def test_a_query_cannot_close_the_bounding_subquery() -> None:
    for escape in ("RETURN 1 } MATCH (n) RETURN n UNION CALL { RETURN 1", "RETURN '}", "RETURN 1 /* }",
                   "RETURN {a: 1"):
        with pytest.raises(GraphQueryError, match="braces"):
            bounded_subquery(escape, 10)
    assert bounded_subquery("RETURN '{' AS a, {b: 1} AS m // }\n;", 11).endswith("\n}\nRETURN * LIMIT 11")
