"""The knowledge graph: one GraphStore, with a FalkorDB adapter (default) and a Neo4j adapter.

Both adapters run the same Cypher, kept to the subset FalkorDB and Neo4j share; only how a query
is sent differs (`_run`). The model is deliberately small:

* `(:Entity {id, type, value, tlp_rank, x_<name>...})`: `id` is the STIX id (deterministic, see
  observables); each further STIX property is a node property `x_<name>` holding its JSON text
  (both stores hold flat values only). Upserts merge them (`SET e += ...`), so a later sighting
  that knows less (a counterparty seen without its balance) never erases what an earlier one knew.
* `(:Entity)-[:REL {id, type, confidence, evidence, tlp_rank}]->(:Entity)`: one relationship label
  with the STIX relationship type as a property, since Cypher cannot take a label as a parameter and
  batched UNWIND writes need one statement for every type. `evidence` lists observation ids.

TLP: `tlp_rank` (Tlp.rank, 0 clear .. 4 red) is the least restrictive label among the observations
that wrote the node or edge: once anyone may share that it exists, a caller cleared for that label
may see it. A row written before labels existed has none and reads as clear. Reads take the
caller's ceiling and filter inside the query, paths included: a neighbourhood never reaches an
entity through a node or edge the caller may not see. Properties are not labelled one by one: a
more restrictive sighting's properties on a less restrictive entity are visible with the entity.

Raw queries (`query`) are bounded inside the engine: the time by the store's query timeout (a
FalkorDB query argument; a Neo4j transaction timeout), the rows by a LIMIT the engine applies
(FalkorDB: the query is run as a CALL subquery under `RETURN * LIMIT n`; Neo4j: records are pulled
`n` at a time and the rest discarded). Without the row bound a 3-million-row UNWIND computed in
0.3 s but held FalkorDB for 17 s while it built and sent the reply, which no timeout covers.

Writes are batched: one `UNWIND $rows ... MERGE` per batch, so a write costs one round trip per
batch rather than per entity. Upserts are idempotent: writing the same batch twice leaves the
graph as it was (same nodes, same edges, same properties). Time-varying provenance (when, by whom)
lives in PostgreSQL (services.collectors.observations), not on nodes.

FalkorDB is reached through its native client: its Bolt port crashed on a 100-row UNWIND here.

Metrics: bev_threat_detections_total{kind} counts threat entities (THREAT_KINDS) an upsert adds to
the graph, known from one extra read of those rows' ids before the write (only batches holding
one pay it). Two writers racing on the same new entity may both count it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import neo4j
import redis
from falkordb.asyncio import FalkorDB
from neo4j import exceptions
from prometheus_client import Counter

from bev.vocab import Tlp
from services.collectors.observables import Observable, Relation

MAX_DEPTH = 3
PROPERTY_PREFIX = "x_"
TLP_PROPERTY = "tlp_rank"
ANY_TLP = Tlp.RED  # the ceiling of a caller who may read every label

THREAT_KINDS = ("malware", "threat-actor", "intrusion-set", "campaign", "attack-pattern")
THREAT_DETECTIONS = Counter("bev_threat_detections_total",
                            "Threat entities (malware, threat actors, intrusion sets, campaigns, attack patterns) "
                            "written to the knowledge graph for the first time, by kind", ["kind"])
for _kind in THREAT_KINDS:  # every kind from 0: a first detection is an increase a rule can see
    THREAT_DETECTIONS.labels(_kind)


class GraphUnavailable(Exception):
    """The graph store cannot be reached; str() is one line."""


class GraphQueryError(ValueError):
    """A query was refused or failed (write attempted, syntax error, timeout)."""


@dataclass(frozen=True)
class EntityRow:
    id: str
    type: str
    value: str
    props: str = "{}"  # JSON object
    tlp: Tlp = Tlp.CLEAR  # written: the observation's label; read: the least restrictive one seen

    @classmethod
    def of(cls, observable: Observable, tlp: Tlp = Tlp.CLEAR) -> EntityRow:
        return cls(observable.id, observable.type, observable.value,
                   json.dumps(dict(observable.properties), sort_keys=True, separators=(",", ":")), tlp)

    def as_param(self) -> dict[str, Any]:
        props = {f"{PROPERTY_PREFIX}{key}": json.dumps(value, sort_keys=True, separators=(",", ":"))
                 for key, value in json.loads(self.props).items()}
        return {"id": self.id, "type": self.type, "value": self.value, "props": props, "tlp": self.tlp.rank}


@dataclass(frozen=True)
class RelationRow:
    id: str
    source_id: str
    target_id: str
    type: str
    confidence: int
    evidence: tuple[str, ...] = ()
    tlp: Tlp = Tlp.CLEAR  # as EntityRow.tlp

    @classmethod
    def of(cls, relation: Relation, evidence: Sequence[str] = (), confidence: int | None = None,
           tlp: Tlp = Tlp.CLEAR) -> RelationRow:
        return cls(relation.id, relation.source.id, relation.target.id, relation.type,
                   relation.confidence if confidence is None else confidence, tuple(evidence), tlp)

    def as_param(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source_id, "target": self.target_id, "type": self.type,
                "confidence": self.confidence, "evidence": list(self.evidence), "tlp": self.tlp.rank}


@dataclass
class Subgraph:
    entities: list[EntityRow] = field(default_factory=list)
    relations: list[RelationRow] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


class GraphStore(Protocol):
    async def ensure_schema(self) -> None: ...
    async def upsert(self, entities: Sequence[EntityRow], relations: Sequence[RelationRow] = ()) -> None: ...
    async def unknown(self, entities: Sequence[EntityRow],
                      relations: Sequence[RelationRow] = ()) -> tuple[set[str], set[str]]: ...
    async def get_entity(self, entity_id: str, max_tlp: Tlp = ANY_TLP) -> EntityRow | None: ...
    async def neighborhood(self, entity_id: str, depth: int, limit: int, max_tlp: Tlp = ANY_TLP) -> Subgraph: ...
    async def subgraph(self, entity_ids: Sequence[str], depth: int, limit: int,
                       max_tlp: Tlp = ANY_TLP) -> Subgraph: ...
    async def query(self, cypher: str, params: Mapping[str, Any], limit: int) -> QueryResult: ...
    async def counts(self) -> tuple[int, int]: ...
    async def close(self) -> None: ...


# The label only ever gets less restrictive; a node or edge written before labels existed reads as clear.
_LEAST_RESTRICTIVE = "CASE WHEN coalesce({v}.tlp_rank, 0) < row.tlp THEN coalesce({v}.tlp_rank, 0) ELSE row.tlp END"

UPSERT_ENTITIES = f"""
UNWIND $rows AS row
MERGE (e:Entity {{id: row.id}})
ON CREATE SET e.tlp_rank = row.tlp
ON MATCH SET e.tlp_rank = {_LEAST_RESTRICTIVE.format(v="e")}
SET e.type = row.type, e.value = row.value
SET e += row.props
"""

UPSERT_RELATIONS = f"""
UNWIND $rows AS row
MATCH (a:Entity {{id: row.source}})
MATCH (b:Entity {{id: row.target}})
MERGE (a)-[r:REL {{id: row.id}}]->(b)
ON CREATE SET r.type = row.type, r.confidence = row.confidence, r.evidence = row.evidence, r.tlp_rank = row.tlp
ON MATCH SET r.confidence = CASE WHEN r.confidence >= row.confidence THEN r.confidence ELSE row.confidence END,
             r.evidence = r.evidence + [x IN row.evidence WHERE NOT x IN r.evidence],
             r.tlp_rank = {_LEAST_RESTRICTIVE.format(v="r")}
"""

# The one-entity-per-statement form, kept for the benchmark's baseline.
UPSERT_ONE_ENTITY = (f"WITH {{tlp: $tlp}} AS row MERGE (e:Entity {{id: $id}}) ON CREATE SET e.tlp_rank = row.tlp "
                     f"ON MATCH SET e.tlp_rank = {_LEAST_RESTRICTIVE.format(v='e')} "
                     "SET e.type = $type, e.value = $value SET e += $props")

KNOWN_ENTITIES = "MATCH (e:Entity) WHERE e.id IN $ids RETURN e.id"
KNOWN_RELATIONS = """
UNWIND $rows AS row
MATCH (:Entity {id: row.source})-[r:REL {id: row.id}]->(:Entity {id: row.target})
RETURN r.id
"""

_ENTITY_COLUMNS = "e.id, e.type, e.value, properties(e)"
_RELATION_COLUMNS = "r.id, a.id, b.id, r.type, r.confidence, r.evidence, r.tlp_rank"
_VISIBLE_ENTITY = "coalesce(e.tlp_rank, 0) <= $ceiling"
_VISIBLE_RELATION = "coalesce(r.tlp_rank, 0) <= $ceiling"
# Every node and edge on the way is visible too, or a neighbourhood would show what an unseen hop links.
_VISIBLE_PATH = ("all(n IN nodes(p) WHERE coalesce(n.tlp_rank, 0) <= $ceiling) "
                 "AND all(x IN relationships(p) WHERE coalesce(x.tlp_rank, 0) <= $ceiling)")


def _tlp(rank: Any) -> Tlp:
    labels = Tlp.ordered()
    return labels[min(max(int(rank or 0), 0), len(labels) - 1)]


def _entity(row: Sequence[Any]) -> EntityRow:
    stored: Mapping[str, Any] = row[3] or {}
    props = {key[len(PROPERTY_PREFIX):]: json.loads(value) for key, value in stored.items()
             if key.startswith(PROPERTY_PREFIX)}
    return EntityRow(str(row[0]), str(row[1]), str(row[2]), json.dumps(props, sort_keys=True, separators=(",", ":")),
                     _tlp(stored.get(TLP_PROPERTY)))


def _relation(row: Sequence[Any]) -> RelationRow:
    return RelationRow(str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4] or 0),
                       tuple(str(x) for x in (row[5] or [])), _tlp(row[6]))


def _least_restrictive(a: Tlp, b: Tlp) -> Tlp:
    return a if a.rank <= b.rank else b


def bounded_subquery(cypher: str, rows: int) -> str:
    """`cypher` as a CALL subquery under `RETURN * LIMIT rows`, so the engine stops producing rows
    there. GraphQueryError when its braces do not balance: text that closes the subquery early
    could run an unbounded statement after it."""
    body = cypher.strip().rstrip(";").rstrip()
    if not _braces_balance(body):
        raise GraphQueryError("unbalanced braces: a query's { and } must pair up")
    # `WITH *` imports nothing but makes a query's own leading WITH an ordinary clause (FalkorDB reads
    # a subquery's first WITH as its imports); the newline ends a trailing // comment.
    return f"CALL {{\nWITH *\n{body}\n}}\nRETURN * LIMIT {int(rows)}"


def returned_columns(cypher: str) -> list[str] | None:
    """The column names of the query's last top-level RETURN, in its order ("a.value", an alias),
    or None when they cannot be read (RETURN *, no RETURN). `RETURN *` around a subquery answers
    its columns sorted by name; this is the order to put them back in."""
    text = _blank_literals(cypher)
    depth, last = 0, -1
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text[i:i + 6].upper() == "RETURN" and (i == 0 or not _word(text[i - 1])) \
                and (i + 6 == len(text) or not _word(text[i + 6])):
            last = i
    if last < 0:
        return None
    tail = text[last + 6:]
    end = re.search(r"(?i)\b(ORDER\s+BY|SKIP|LIMIT|UNION)\b", tail)
    projection, start = (tail[:end.start()] if end else tail), last + 6
    items: list[tuple[int, int]] = []
    depth, begin = 0, 0
    for i, ch in enumerate(projection + ","):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append((begin, i))
            begin = i + 1
    names: list[str] = []
    for first, stop in items:
        blanked = projection[first:stop]  # a comment is blank here, so it drops out of the name
        lead = len(blanked) - len(blanked.lstrip())
        original = cypher[start + first + lead:start + first + len(blanked.rstrip())]
        if not original:
            return None
        original = re.sub(r"(?i)^DISTINCT\s+", "", original) if not names else original
        alias = re.search(r"(?is)\s+AS\s+(`[^`]+`|\w+)\s*$", original)
        names.append(alias.group(1).strip("`") if alias else original)
    return None if names == ["*"] else names


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _blank_literals(cypher: str) -> str:
    """`cypher` with the insides of strings, `names` and comments blanked (same length), so that
    keywords and brackets are found only in the query's own text."""
    out = list(cypher)
    i, n = 0, len(cypher)
    while i < n:
        ch = cypher[i]
        if ch in "'\"`":
            j = i + 1
            while j < n and cypher[j] != ch:
                j += 2 if cypher[j] == "\\" and ch != "`" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        elif cypher.startswith("//", i) or cypher.startswith("/*", i):
            end = cypher.find("\n", i) if cypher[i + 1] == "/" else cypher.find("*/", i + 2) + 2
            end = n if end < 1 else end
            for k in range(i, end):
                out[k] = " "
            i = end
        else:
            i += 1
    return "".join(out)


def _braces_balance(cypher: str) -> bool:
    """Whether every } closes a { of the query itself (braces in strings, `names` and comments aside)."""
    depth = 0
    i, n = 0, len(cypher)
    while i < n:
        ch = cypher[i]
        if ch in "'\"`":
            i += 1
            while i < n and cypher[i] != ch:
                i += 2 if cypher[i] == "\\" and ch != "`" else 1
            if i >= n:
                return False  # an unterminated string or name would swallow the wrapper's end
        elif cypher.startswith("//", i):
            end = cypher.find("\n", i)
            i = n if end < 0 else end
        elif cypher.startswith("/*", i):
            end = cypher.find("*/", i + 2)
            if end < 0:
                return False
            i = end + 1
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0


class CypherGraphStore:
    """The Cypher both stores share; adapters supply `_run` and the schema statements."""

    batch_size: int = 1000
    query_timeout_ms: int = 5000

    async def _run(self, cypher: str, params: Mapping[str, Any] | None = None, *,
                   read_only: bool = False) -> tuple[list[str], list[list[Any]]]:
        raise NotImplementedError

    async def _run_bounded(self, cypher: str, params: Mapping[str, Any], rows: int) -> tuple[list[str], list[list[Any]]]:
        """A read-only query the engine stops after `rows` rows (and after the query timeout)."""
        raise NotImplementedError

    async def upsert(self, entities: Sequence[EntityRow], relations: Sequence[RelationRow] = ()) -> None:
        unique = _unique_entities(entities)
        threats = [row for row in unique if row.type in THREAT_KINDS]
        new_threats = (await self.unknown(threats))[0] if threats else set()
        for start in range(0, len(unique), self.batch_size):
            batch = [row.as_param() for row in unique[start:start + self.batch_size]]
            await self._run(UPSERT_ENTITIES, {"rows": batch})
        for row in threats:
            if row.id in new_threats:
                THREAT_DETECTIONS.labels(row.type).inc()
        rows = _unique_relations(relations)
        for start in range(0, len(rows), self.batch_size):
            await self._run(UPSERT_RELATIONS, {"rows": [row.as_param() for row in rows[start:start + self.batch_size]]})

    async def unknown(self, entities: Sequence[EntityRow],
                      relations: Sequence[RelationRow] = ()) -> tuple[set[str], set[str]]:
        """The ids among these entities and relations the graph does not hold yet."""
        new_entities = {row.id for row in entities}
        ids = sorted(new_entities)
        for start in range(0, len(ids), self.batch_size):
            _, found = await self._run(KNOWN_ENTITIES, {"ids": ids[start:start + self.batch_size]}, read_only=True)
            new_entities -= {str(row[0]) for row in found}
        rows = _unique_relations(relations)
        new_relations = {row.id for row in rows}
        for start in range(0, len(rows), self.batch_size):
            batch = [{"id": r.id, "source": r.source_id, "target": r.target_id} for r in rows[start:start + self.batch_size]]
            _, found = await self._run(KNOWN_RELATIONS, {"rows": batch}, read_only=True)
            new_relations -= {str(row[0]) for row in found}
        return new_entities, new_relations

    async def upsert_one_by_one(self, entities: Sequence[EntityRow]) -> None:
        """One MERGE round trip per entity: the baseline the batched path is measured against."""
        for row in entities:
            await self._run(UPSERT_ONE_ENTITY, row.as_param())

    async def get_entity(self, entity_id: str, max_tlp: Tlp = ANY_TLP) -> EntityRow | None:
        """The entity, or None when it is absent or labelled above `max_tlp` (the caller cannot tell which)."""
        _, rows = await self._run(
            f"MATCH (e:Entity {{id: $id}}) WHERE {_VISIBLE_ENTITY} RETURN {_ENTITY_COLUMNS}",
            {"id": entity_id, "ceiling": max_tlp.rank}, read_only=True)
        return _entity(rows[0]) if rows else None

    async def neighborhood(self, entity_id: str, depth: int, limit: int, max_tlp: Tlp = ANY_TLP) -> Subgraph:
        return await self.subgraph([entity_id], depth, limit, max_tlp)

    async def subgraph(self, entity_ids: Sequence[str], depth: int, limit: int,
                       max_tlp: Tlp = ANY_TLP) -> Subgraph:
        """What lies within `depth` hops of the entities, seen with the ceiling `max_tlp`."""
        if not 0 <= depth <= MAX_DEPTH:
            raise GraphQueryError(f"depth must be between 0 and {MAX_DEPTH}, not {depth}")
        ceiling = max_tlp.rank
        _, start_rows = await self._run(
            f"MATCH (e:Entity) WHERE e.id IN $ids AND {_VISIBLE_ENTITY} RETURN {_ENTITY_COLUMNS}",
            {"ids": list(entity_ids), "ceiling": ceiling}, read_only=True)
        found = {row[0]: _entity(row) for row in start_rows}
        truncated = False
        if depth > 0 and found:
            # The hop count is validated above and inlined: variable-length bounds cannot be parameters.
            _, rows = await self._run(
                f"MATCH p = (s:Entity)-[:REL*1..{depth}]-(e:Entity) WHERE s.id IN $ids AND {_VISIBLE_PATH} "
                f"RETURN DISTINCT {_ENTITY_COLUMNS} LIMIT $limit",
                {"ids": list(found), "limit": limit + 1, "ceiling": ceiling}, read_only=True)
            for row in rows:
                if row[0] not in found:
                    if len(found) >= limit:
                        truncated = True
                        break
                    found[row[0]] = _entity(row)
        _, rel_rows = await self._run(
            f"MATCH (a:Entity)-[r:REL]->(b:Entity) WHERE a.id IN $ids AND b.id IN $ids AND {_VISIBLE_RELATION} "
            f"RETURN {_RELATION_COLUMNS}",
            {"ids": list(found), "ceiling": ceiling}, read_only=True)
        return Subgraph(sorted(found.values(), key=lambda e: e.id),
                        sorted((_relation(row) for row in rel_rows), key=lambda r: r.id), truncated)

    async def query(self, cypher: str, params: Mapping[str, Any], limit: int) -> QueryResult:
        """A read-only query; the engine produces at most `limit` + 1 rows (one more tells `truncated`)."""
        columns, rows = await self._run_bounded(cypher, params, limit + 1)
        return QueryResult(columns, rows[:limit], len(rows) > limit)

    async def counts(self) -> tuple[int, int]:
        _, nodes = await self._run("MATCH (e:Entity) RETURN count(e)", read_only=True)
        _, edges = await self._run("MATCH ()-[r:REL]->() RETURN count(r)", read_only=True)
        return int(nodes[0][0]), int(edges[0][0])


def _unique_entities(entities: Sequence[EntityRow]) -> list[EntityRow]:
    """One row per id (the last one's properties), labelled with the least restrictive label among them."""
    unique: dict[str, EntityRow] = {}
    for row in entities:
        old = unique.get(row.id)
        unique[row.id] = row if old is None else replace(row, tlp=_least_restrictive(old.tlp, row.tlp))
    return list(unique.values())


def _unique_relations(relations: Sequence[RelationRow]) -> list[RelationRow]:
    """One row per edge id, or MERGE would race itself inside a batch."""
    merged: dict[str, RelationRow] = {}
    for rel in relations:
        old = merged.get(rel.id)
        if old is not None:
            rel = replace(rel, confidence=max(old.confidence, rel.confidence),
                          evidence=tuple(dict.fromkeys(old.evidence + rel.evidence)),
                          tlp=_least_restrictive(old.tlp, rel.tlp))
        merged[rel.id] = rel
    return list(merged.values())


def plain(value: Any) -> Any:
    """A query result value as JSON-friendly data (nodes and edges become their property maps)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    properties = getattr(value, "properties", None)
    if isinstance(properties, Mapping):  # FalkorDB Node/Edge
        return {str(k): plain(v) for k, v in properties.items()}
    if hasattr(value, "items"):  # neo4j Node/Relationship
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "nodes"):  # paths
        return [plain(n) for n in value.nodes()] if callable(value.nodes) else [plain(n) for n in value.nodes]
    return str(value)


class FalkorGraphStore(CypherGraphStore):
    """FalkorDB through its native (Redis protocol) client."""

    def __init__(self, host: str, port: int, password: str, graph: str = "bev", *, batch_size: int = 1000,
                 query_timeout_ms: int = 5000) -> None:
        self._where = f"FalkorDB at {host}:{port}"
        try:
            # The client asks the server whether it is a cluster while it is constructed.
            self._db = FalkorDB(host=host, port=port, password=password or None, socket_connect_timeout=5)
        except (OSError, redis.ConnectionError, redis.AuthenticationError) as exc:
            raise GraphUnavailable(f"cannot reach {self._where}: {exc}") from None
        self._graph = self._db.select_graph(graph)
        self.graph_name = graph
        self.batch_size = batch_size
        self.query_timeout_ms = query_timeout_ms

    async def ensure_schema(self) -> None:
        try:
            await self._graph.query("CREATE INDEX FOR (e:Entity) ON (e.id)")
        except redis.ResponseError as exc:
            if "already indexed" not in str(exc):
                raise
        except (OSError, redis.ConnectionError) as exc:
            raise GraphUnavailable(f"cannot reach {self._where}: {exc}") from None

    async def _run(self, cypher: str, params: Mapping[str, Any] | None = None, *,
                   read_only: bool = False) -> tuple[list[str], list[list[Any]]]:
        try:
            if read_only:
                result = await self._graph.ro_query(cypher, dict(params or {}), timeout=self.query_timeout_ms)
            else:
                result = await self._graph.query(cypher, dict(params or {}))
        except (OSError, redis.ConnectionError) as exc:
            raise GraphUnavailable(f"cannot reach {self._where}: {exc}") from None
        except redis.ResponseError as exc:
            raise GraphQueryError(str(exc)) from None
        columns = [str(column[1]) for column in result.header]
        return columns, [list(row) for row in result.result_set]

    async def _run_bounded(self, cypher: str, params: Mapping[str, Any], rows: int) -> tuple[list[str], list[list[Any]]]:
        # RO_QUERY's timeout stops the work; the LIMIT stops the reply, which the timeout does not cover.
        columns, found = await self._run(bounded_subquery(cypher, rows), params, read_only=True)
        # RETURN * answers the subquery's columns sorted by name: put them back in the query's order.
        wanted = returned_columns(cypher)
        if wanted is None or sorted(wanted) != sorted(columns) or len(set(wanted)) != len(wanted):
            return columns, found
        order = [columns.index(name) for name in wanted]
        return wanted, [[row[i] for i in order] for row in found]

    async def delete_graph(self) -> None:
        try:
            await self._graph.delete()
        except redis.ResponseError as exc:
            if "empty key" not in str(exc):  # a graph never written is already what we want
                raise

    async def close(self) -> None:
        await self._db.aclose()


NEO4J_FETCH_SIZE = 1000  # the driver's default: records pulled per round trip


class Neo4jGraphStore(CypherGraphStore):
    """Neo4j through the official driver (production option; see deploy/manifest.yaml)."""

    def __init__(self, uri: str, user: str, password: str, database: str = "", *, batch_size: int = 1000,
                 query_timeout_ms: int = 5000) -> None:
        self._driver = neo4j.AsyncGraphDatabase.driver(uri, auth=(user, password))
        self._database = database or None
        self.batch_size = batch_size
        self.query_timeout_ms = query_timeout_ms
        self._where = f"Neo4j at {uri}"

    async def ensure_schema(self) -> None:
        await self._run("CREATE CONSTRAINT bev_entity_id IF NOT EXISTS FOR (e:Entity) REQUIRE e.id IS UNIQUE")
        await self._run("CREATE INDEX bev_rel_id IF NOT EXISTS FOR ()-[r:REL]-() ON (r.id)")

    async def _run(self, cypher: str, params: Mapping[str, Any] | None = None, *,
                   read_only: bool = False) -> tuple[list[str], list[list[Any]]]:
        return await self._session_run(cypher, params, read_only=read_only)

    async def _run_bounded(self, cypher: str, params: Mapping[str, Any], rows: int) -> tuple[list[str], list[list[Any]]]:
        # The server computes records as they are pulled: `rows` at a time, the rest discarded at the
        # transaction's end. (A CALL subquery would refuse unaliased columns, as FalkorDB does not.)
        return await self._session_run(cypher, params, read_only=True, rows=rows)

    async def _session_run(self, cypher: str, params: Mapping[str, Any] | None, *, read_only: bool,
                           rows: int | None = None) -> tuple[list[str], list[list[Any]]]:
        mode = neo4j.READ_ACCESS if read_only else neo4j.WRITE_ACCESS

        @neo4j.unit_of_work(timeout=self.query_timeout_ms / 1000 if read_only else None)
        async def work(tx: neo4j.AsyncManagedTransaction) -> tuple[list[str], list[list[Any]]]:
            result = await tx.run(cypher, dict(params or {}))
            records: list[list[Any]] = []
            async for record in result:
                records.append(list(record.values()))
                if rows is not None and len(records) >= rows:
                    break
            return list(result.keys()), records

        try:
            async with self._driver.session(database=self._database, default_access_mode=mode,
                                            fetch_size=rows or NEO4J_FETCH_SIZE) as session:
                if read_only:
                    return await session.execute_read(work)
                return await session.execute_write(work)
        except exceptions.ServiceUnavailable as exc:
            raise GraphUnavailable(f"cannot reach {self._where}: {exc}") from None
        except exceptions.Neo4jError as exc:
            raise GraphQueryError(str(exc.message or exc)) from None

    async def close(self) -> None:
        await self._driver.close()
