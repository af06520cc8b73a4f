"""The knowledge graph: one GraphStore, with a FalkorDB adapter (default) and a Neo4j adapter.

Both adapters run the same Cypher, kept to the subset FalkorDB and Neo4j share; only how a query
is sent differs (`_run`). The model is deliberately small:

* `(:Entity {id, type, value, x_<name>...})`: `id` is the STIX id (deterministic, see
  observables); each further STIX property is a node property `x_<name>` holding its JSON text
  (both stores hold flat values only). Upserts merge them (`SET e += ...`), so a later sighting
  that knows less (a counterparty seen without its balance) never erases what an earlier one knew.
* `(:Entity)-[:REL {id, type, confidence, evidence}]->(:Entity)`: one relationship label with the
  STIX relationship type as a property, since Cypher cannot take a label as a parameter and
  batched UNWIND writes need one statement for every type. `evidence` lists observation ids.

Writes are batched: one `UNWIND $rows ... MERGE` per batch, so a write costs one round trip per
batch rather than per entity. Upserts are idempotent: writing the same batch twice leaves the
graph as it was (same nodes, same edges, same properties). Time-varying provenance (when, by whom)
lives in PostgreSQL (services.collectors.observations), not on nodes.

FalkorDB is reached through its native client: its Bolt port crashed on a 100-row UNWIND here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import neo4j
import redis
from falkordb.asyncio import FalkorDB
from neo4j import exceptions

from services.collectors.observables import Observable, Relation

MAX_DEPTH = 3
PROPERTY_PREFIX = "x_"


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

    @classmethod
    def of(cls, observable: Observable) -> EntityRow:
        return cls(observable.id, observable.type, observable.value,
                   json.dumps(dict(observable.properties), sort_keys=True, separators=(",", ":")))

    def as_param(self) -> dict[str, Any]:
        props = {f"{PROPERTY_PREFIX}{key}": json.dumps(value, sort_keys=True, separators=(",", ":"))
                 for key, value in json.loads(self.props).items()}
        return {"id": self.id, "type": self.type, "value": self.value, "props": props}


@dataclass(frozen=True)
class RelationRow:
    id: str
    source_id: str
    target_id: str
    type: str
    confidence: int
    evidence: tuple[str, ...] = ()

    @classmethod
    def of(cls, relation: Relation, evidence: Sequence[str] = (), confidence: int | None = None) -> RelationRow:
        return cls(relation.id, relation.source.id, relation.target.id, relation.type,
                   relation.confidence if confidence is None else confidence, tuple(evidence))

    def as_param(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source_id, "target": self.target_id, "type": self.type,
                "confidence": self.confidence, "evidence": list(self.evidence)}


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
    async def get_entity(self, entity_id: str) -> EntityRow | None: ...
    async def neighborhood(self, entity_id: str, depth: int, limit: int) -> Subgraph: ...
    async def subgraph(self, entity_ids: Sequence[str], depth: int, limit: int) -> Subgraph: ...
    async def query(self, cypher: str, params: Mapping[str, Any], limit: int) -> QueryResult: ...
    async def counts(self) -> tuple[int, int]: ...
    async def close(self) -> None: ...


UPSERT_ENTITIES = """
UNWIND $rows AS row
MERGE (e:Entity {id: row.id})
SET e.type = row.type, e.value = row.value
SET e += row.props
"""

UPSERT_RELATIONS = """
UNWIND $rows AS row
MATCH (a:Entity {id: row.source})
MATCH (b:Entity {id: row.target})
MERGE (a)-[r:REL {id: row.id}]->(b)
ON CREATE SET r.type = row.type, r.confidence = row.confidence, r.evidence = row.evidence
ON MATCH SET r.confidence = CASE WHEN r.confidence >= row.confidence THEN r.confidence ELSE row.confidence END,
             r.evidence = r.evidence + [x IN row.evidence WHERE NOT x IN r.evidence]
"""

# The one-entity-per-statement form, kept for the benchmark's baseline.
UPSERT_ONE_ENTITY = "MERGE (e:Entity {id: $id}) SET e.type = $type, e.value = $value SET e += $props"

_ENTITY_COLUMNS = "e.id, e.type, e.value, properties(e)"
_RELATION_COLUMNS = "r.id, a.id, b.id, r.type, r.confidence, r.evidence"


def _entity(row: Sequence[Any]) -> EntityRow:
    stored: Mapping[str, Any] = row[3] or {}
    props = {key[len(PROPERTY_PREFIX):]: json.loads(value) for key, value in stored.items()
             if key.startswith(PROPERTY_PREFIX)}
    return EntityRow(str(row[0]), str(row[1]), str(row[2]), json.dumps(props, sort_keys=True, separators=(",", ":")))


def _relation(row: Sequence[Any]) -> RelationRow:
    return RelationRow(str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4] or 0),
                       tuple(str(x) for x in (row[5] or [])))


class CypherGraphStore:
    """The Cypher both stores share; adapters supply `_run` and the schema statements."""

    batch_size: int = 1000
    query_timeout_ms: int = 5000

    async def _run(self, cypher: str, params: Mapping[str, Any] | None = None, *,
                   read_only: bool = False) -> tuple[list[str], list[list[Any]]]:
        raise NotImplementedError

    async def upsert(self, entities: Sequence[EntityRow], relations: Sequence[RelationRow] = ()) -> None:
        unique = list({row.id: row for row in entities}.values())
        for start in range(0, len(unique), self.batch_size):
            batch = [row.as_param() for row in unique[start:start + self.batch_size]]
            await self._run(UPSERT_ENTITIES, {"rows": batch})
        merged: dict[str, RelationRow] = {}
        for rel in relations:  # one row per edge id, or MERGE would race itself inside the batch
            if rel.id in merged:
                old = merged[rel.id]
                rel = RelationRow(rel.id, rel.source_id, rel.target_id, rel.type, max(old.confidence, rel.confidence),
                                  tuple(dict.fromkeys(old.evidence + rel.evidence)))
            merged[rel.id] = rel
        rows = list(merged.values())
        for start in range(0, len(rows), self.batch_size):
            await self._run(UPSERT_RELATIONS, {"rows": [row.as_param() for row in rows[start:start + self.batch_size]]})

    async def upsert_one_by_one(self, entities: Sequence[EntityRow]) -> None:
        """One MERGE round trip per entity: the baseline the batched path is measured against."""
        for row in entities:
            await self._run(UPSERT_ONE_ENTITY, row.as_param())

    async def get_entity(self, entity_id: str) -> EntityRow | None:
        _, rows = await self._run(f"MATCH (e:Entity {{id: $id}}) RETURN {_ENTITY_COLUMNS}", {"id": entity_id},
                                  read_only=True)
        return _entity(rows[0]) if rows else None

    async def neighborhood(self, entity_id: str, depth: int, limit: int) -> Subgraph:
        return await self.subgraph([entity_id], depth, limit)

    async def subgraph(self, entity_ids: Sequence[str], depth: int, limit: int) -> Subgraph:
        if not 0 <= depth <= MAX_DEPTH:
            raise GraphQueryError(f"depth must be between 0 and {MAX_DEPTH}, not {depth}")
        _, start_rows = await self._run(
            f"MATCH (e:Entity) WHERE e.id IN $ids RETURN {_ENTITY_COLUMNS}", {"ids": list(entity_ids)}, read_only=True)
        found = {row[0]: _entity(row) for row in start_rows}
        truncated = False
        if depth > 0 and found:
            # The hop count is validated above and inlined: variable-length bounds cannot be parameters.
            _, rows = await self._run(
                f"MATCH (s:Entity)-[*1..{depth}]-(e:Entity) WHERE s.id IN $ids "
                f"RETURN DISTINCT {_ENTITY_COLUMNS} LIMIT $limit",
                {"ids": list(found), "limit": limit + 1}, read_only=True)
            for row in rows:
                if row[0] not in found:
                    if len(found) >= limit:
                        truncated = True
                        break
                    found[row[0]] = _entity(row)
        _, rel_rows = await self._run(
            f"MATCH (a:Entity)-[r:REL]->(b:Entity) WHERE a.id IN $ids AND b.id IN $ids RETURN {_RELATION_COLUMNS}",
            {"ids": list(found)}, read_only=True)
        return Subgraph(sorted(found.values(), key=lambda e: e.id),
                        sorted((_relation(row) for row in rel_rows), key=lambda r: r.id), truncated)

    async def query(self, cypher: str, params: Mapping[str, Any], limit: int) -> QueryResult:
        columns, rows = await self._run(cypher, params, read_only=True)
        return QueryResult(columns, rows[:limit], len(rows) > limit)

    async def counts(self) -> tuple[int, int]:
        _, nodes = await self._run("MATCH (e:Entity) RETURN count(e)", read_only=True)
        _, edges = await self._run("MATCH ()-[r:REL]->() RETURN count(r)", read_only=True)
        return int(nodes[0][0]), int(edges[0][0])


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

    async def delete_graph(self) -> None:
        try:
            await self._graph.delete()
        except redis.ResponseError as exc:
            if "empty key" not in str(exc):  # a graph never written is already what we want
                raise

    async def close(self) -> None:
        await self._db.aclose()


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
        mode = neo4j.READ_ACCESS if read_only else neo4j.WRITE_ACCESS

        @neo4j.unit_of_work(timeout=self.query_timeout_ms / 1000 if read_only else None)
        async def work(tx: neo4j.AsyncManagedTransaction) -> tuple[list[str], list[list[Any]]]:
            result = await tx.run(cypher, dict(params or {}))
            records = [record async for record in result]
            return list(result.keys()), [list(record.values()) for record in records]

        try:
            async with self._driver.session(database=self._database, default_access_mode=mode) as session:
                if read_only:
                    return await session.execute_read(work)
                return await session.execute_write(work)
        except exceptions.ServiceUnavailable as exc:
            raise GraphUnavailable(f"cannot reach {self._where}: {exc}") from None
        except exceptions.Neo4jError as exc:
            raise GraphQueryError(str(exc.message or exc)) from None

    async def close(self) -> None:
        await self._driver.close()
