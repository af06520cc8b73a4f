"""Where chunk vectors live, behind one interface: pgvector (default), Qdrant, Weaviate.

Documents, chunk text and the full-text index always stay in PostgreSQL; a backend holds one
vector per chunk and model with the payload that search filters on (document id, offsets,
source, TLP, investigation, collection time, team). Every backend passes one conformance suite
(services/embeddings/tests/test_vector_index.py). Scores are cosine similarities.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient
    from weaviate import WeaviateClient

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ChunkPayload:
    chunk_id: str
    document_id: str
    start: int
    end: int
    source: str
    tlp: str
    investigation_id: str
    collected_at: datetime
    team: str  # '' = the shared corpus


@dataclass(frozen=True)
class SearchFilter:
    sources: list[str] = field(default_factory=list)  # any of
    collected_after: datetime | None = None  # inclusive
    collected_before: datetime | None = None  # exclusive
    tlp: list[str] = field(default_factory=list)  # any of
    investigation_id: str = ""
    teams: list[str] = field(default_factory=list)  # any of ('' = the shared corpus)

    @property
    def empty(self) -> bool:
        return not (self.sources or self.collected_after or self.collected_before or self.tlp or self.investigation_id
                    or self.teams)


@dataclass(frozen=True)
class VectorHit:
    chunk_id: str
    score: float


class VectorIndex(Protocol):
    name: str

    async def prepare(self, model: str, dimensions: int) -> None:
        """Create the model's collection/index if missing (idempotent)."""

    async def upsert(self, model: str, chunks: list[ChunkPayload], vectors: Vectors) -> None: ...

    async def search(self, model: str, vector: Vectors, k: int, filters: SearchFilter) -> list[VectorHit]: ...

    async def delete_document(self, document_id: str) -> None: ...

    async def count(self, model: str) -> int: ...

    async def drop(self, model: str) -> None:
        """Remove the model's vectors and index/collection (before re-indexing with new settings)."""

    async def close(self) -> None: ...


def _slug(model: str) -> str:
    """A name fit for a collection/index: readable prefix plus a hash, so distinct models never clash."""
    readable = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:40]
    return f"{readable}_{hashlib.sha1(model.encode()).hexdigest()[:8]}"


class PgVectorIndex:
    """Vectors in corpus.chunk_embeddings, one partial HNSW index per model (cosine).

    Filtered searches join the document table and let pgvector 0.8's iterative index scan
    keep reading the HNSW graph until k rows pass the filter.
    """

    name = "pgvector"

    def __init__(self, pool: AsyncConnectionPool[Any], ef_search: int = 200) -> None:
        self._pool = pool
        self._ef_search = ef_search
        self._dimensions: dict[str, int] = {}

    async def prepare(self, model: str, dimensions: int) -> None:
        index = sql.Identifier(f"chunk_embeddings_hnsw_{_slug(model)}")
        async with self._pool.connection() as conn:
            await conn.execute(
                sql.SQL(
                    "create index if not exists {} on corpus.chunk_embeddings using hnsw "
                    "((embedding::vector({})) vector_cosine_ops) where model = {}"
                ).format(index, sql.Literal(dimensions), sql.Literal(model))
            )
        self._dimensions[model] = dimensions

    def _dims(self, model: str) -> int:
        if model not in self._dimensions:
            raise KeyError(f"model {model!r} has no vector index; prepare() it first")
        return self._dimensions[model]

    async def upsert(self, model: str, chunks: list[ChunkPayload], vectors: Vectors) -> None:
        self._dims(model)
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "insert into corpus.chunk_embeddings (chunk_id, model, embedding) values (%s, %s, %s) "
                "on conflict (chunk_id, model) do update set embedding = excluded.embedding",
                [(c.chunk_id, model, v) for c, v in zip(chunks, vectors, strict=True)],
            )

    async def search(self, model: str, vector: Vectors, k: int, filters: SearchFilter) -> list[VectorHit]:
        dims = sql.Literal(self._dims(model))
        distance = sql.SQL("e.embedding::vector({d}) <=> %(q)s::vector({d})").format(d=dims)
        where, params = pg_filter_sql(filters)
        query = sql.SQL(
            "select e.chunk_id::text, 1 - ({distance}) as similarity from corpus.chunk_embeddings e {join} "
            "where e.model = %(model)s {where} order by {distance} limit %(k)s"
        ).format(
            distance=distance,
            join=sql.SQL("" if filters.empty else "join corpus.chunks c on c.id = e.chunk_id "
                         "join corpus.documents d on d.id = c.document_id"),
            where=where,
        )
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(sql.SQL("set local hnsw.ef_search = {}").format(sql.Literal(max(self._ef_search, k))))
            if not filters.empty:
                await conn.execute("set local hnsw.iterative_scan = relaxed_order")
            rows = await (await conn.execute(query, {**params, "q": vector, "model": model, "k": k})).fetchall()
        hits = [VectorHit(str(r[0]), float(r[1])) for r in rows]
        hits.sort(key=lambda h: h.score, reverse=True)  # relaxed_order may return near-sorted rows
        return hits

    async def delete_document(self, document_id: str) -> None:
        """Nothing to do: the rows go with their chunks (on delete cascade)."""

    async def count(self, model: str) -> int:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "select count(*) from corpus.chunk_embeddings where model = %s", (model,)
            )).fetchone()
        return int(row[0]) if row else 0

    async def drop(self, model: str) -> None:
        index = sql.Identifier(f"chunk_embeddings_hnsw_{_slug(model)}")
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(sql.SQL("drop index if exists corpus.{}").format(index))
            await conn.execute("delete from corpus.chunk_embeddings where model = %s", (model,))
        self._dimensions.pop(model, None)

    async def close(self) -> None:
        """The pool belongs to the corpus store."""


def pg_filter_sql(filters: SearchFilter) -> tuple[sql.Composable, dict[str, Any]]:
    """SQL conditions on documents `d` (prefixed with `and`) plus their parameters."""
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if filters.sources:
        parts.append(sql.SQL("d.source = any(%(f_sources)s)"))
        params["f_sources"] = list(filters.sources)
    if filters.tlp:
        parts.append(sql.SQL("d.tlp = any(%(f_tlp)s)"))
        params["f_tlp"] = list(filters.tlp)
    if filters.investigation_id:
        parts.append(sql.SQL("d.investigation_id = %(f_investigation)s"))
        params["f_investigation"] = filters.investigation_id
    if filters.teams:
        parts.append(sql.SQL("d.team = any(%(f_teams)s)"))
        params["f_teams"] = list(filters.teams)
    if filters.collected_after:
        parts.append(sql.SQL("d.collected_at >= %(f_after)s"))
        params["f_after"] = filters.collected_after
    if filters.collected_before:
        parts.append(sql.SQL("d.collected_at < %(f_before)s"))
        params["f_before"] = filters.collected_before
    if not parts:
        return sql.SQL(""), params
    return sql.SQL("and ") + sql.SQL(" and ").join(parts), params


class QdrantIndex:
    """One Qdrant collection per model (cosine), point id = chunk id, payload for filters.

    `QdrantIndex.open("")` runs qdrant-client's local mode in ``path`` (embedded, no server);
    with a URL it talks to a Qdrant server.
    """

    name = "qdrant"

    def __init__(self, client: AsyncQdrantClient, prefix: str = "bev_chunks") -> None:
        self._client = client
        self._prefix = prefix
        self._collections: dict[str, str] = {}

    @classmethod
    def open(cls, url: str, path: Path | None = None, prefix: str = "bev_chunks") -> QdrantIndex:
        from qdrant_client import AsyncQdrantClient

        if url:
            return cls(AsyncQdrantClient(url=url), prefix)
        if path is None:
            return cls(AsyncQdrantClient(location=":memory:"), prefix)
        path.mkdir(parents=True, exist_ok=True)
        return cls(AsyncQdrantClient(path=str(path)), prefix)

    def collection(self, model: str) -> str:
        return f"{self._prefix}_{_slug(model)}"

    async def prepare(self, model: str, dimensions: int) -> None:
        from qdrant_client import models

        name = self.collection(model)
        if not await self._client.collection_exists(name):
            await self._client.create_collection(
                name, vectors_config=models.VectorParams(size=dimensions, distance=models.Distance.COSINE)
            )
            if self._client.init_options.get("url"):  # payload indexes exist only on a server
                for key, schema in (("document_id", models.PayloadSchemaType.KEYWORD),
                                    ("source", models.PayloadSchemaType.KEYWORD),
                                    ("tlp", models.PayloadSchemaType.KEYWORD),
                                    ("investigation_id", models.PayloadSchemaType.KEYWORD),
                                    ("team", models.PayloadSchemaType.KEYWORD),
                                    ("collected_at", models.PayloadSchemaType.FLOAT)):
                    await self._client.create_payload_index(name, key, field_schema=schema)
        self._collections[model] = name

    def _name(self, model: str) -> str:
        if model not in self._collections:
            raise KeyError(f"model {model!r} has no Qdrant collection; prepare() it first")
        return self._collections[model]

    async def upsert(self, model: str, chunks: list[ChunkPayload], vectors: Vectors) -> None:
        from qdrant_client import models

        points = [
            models.PointStruct(
                id=c.chunk_id,
                vector=v.tolist(),
                payload={
                    "document_id": c.document_id,
                    "start": c.start,
                    "end": c.end,
                    "source": c.source,
                    "tlp": c.tlp,
                    "investigation_id": c.investigation_id,
                    "collected_at": c.collected_at.timestamp(),
                    "team": c.team,
                },
            )
            for c, v in zip(chunks, vectors, strict=True)
        ]
        await self._client.upsert(self._name(model), points=points, wait=True)

    async def search(self, model: str, vector: Vectors, k: int, filters: SearchFilter) -> list[VectorHit]:
        from qdrant_client import models

        must: list[models.Condition] = []
        if filters.sources:
            must.append(models.FieldCondition(key="source", match=models.MatchAny(any=list(filters.sources))))
        if filters.tlp:
            must.append(models.FieldCondition(key="tlp", match=models.MatchAny(any=list(filters.tlp))))
        if filters.investigation_id:
            must.append(models.FieldCondition(key="investigation_id",
                                              match=models.MatchValue(value=filters.investigation_id)))
        if filters.collected_after or filters.collected_before:
            must.append(models.FieldCondition(key="collected_at", range=models.Range(
                gte=filters.collected_after.timestamp() if filters.collected_after else None,
                lt=filters.collected_before.timestamp() if filters.collected_before else None,
            )))
        if filters.teams:
            teams: list[models.Condition] = [
                models.FieldCondition(key="team", match=models.MatchAny(any=list(filters.teams)))]
            if "" in filters.teams:  # points stored before documents had a team are shared ones
                teams.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="team")))
            must.append(models.Filter(should=teams))
        response = await self._client.query_points(
            self._name(model), query=vector.tolist(), limit=k,
            query_filter=models.Filter(must=must) if must else None, with_payload=False,
        )
        return [VectorHit(str(p.id), float(p.score)) for p in response.points]

    async def delete_document(self, document_id: str) -> None:
        from qdrant_client import models

        selector = models.FilterSelector(filter=models.Filter(must=[
            models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))
        ]))
        for name in self._collections.values():
            await self._client.delete(name, points_selector=selector, wait=True)

    async def count(self, model: str) -> int:
        return int((await self._client.count(self._name(model), exact=True)).count)

    async def drop(self, model: str) -> None:
        await self._client.delete_collection(self.collection(model))
        self._collections.pop(model, None)

    async def close(self) -> None:
        await self._client.close()


class WeaviateIndex:
    """One Weaviate collection per model with self-provided vectors (HNSW, cosine).

    weaviate-client's sync API runs in worker threads: it is the documented, stable one, and
    search latency is dominated by the server. No Weaviate server runs on the development
    machine: the conformance suite runs against one when WEAVIATE_URL is set.

    The team is stored as "team:<team>" ("team:" for the shared corpus): a field-tokenized empty
    string leaves no token to filter on.
    """

    name = "weaviate"

    def __init__(self, client: WeaviateClient, prefix: str = "BevChunks") -> None:
        self._client = client
        self._prefix = prefix
        self._collections: dict[str, str] = {}

    @classmethod
    def open(cls, url: str, grpc_port: int = 50051, prefix: str = "BevChunks") -> WeaviateIndex:
        import weaviate

        parsed = urllib.parse.urlsplit(url)
        if not parsed.hostname:
            raise ValueError(f"weaviate_url {url!r} has no host")
        secure = parsed.scheme == "https"
        client = weaviate.connect_to_custom(
            http_host=parsed.hostname, http_port=parsed.port or (443 if secure else 80), http_secure=secure,
            grpc_host=parsed.hostname, grpc_port=grpc_port, grpc_secure=secure,
        )
        return cls(client, prefix)

    def collection(self, model: str) -> str:
        return f"{self._prefix}_{_slug(model)}"

    async def prepare(self, model: str, dimensions: int) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        name = self.collection(model)

        def create() -> None:
            # FIELD tokenization: filters match whole values ("feed-a"), not words within them.
            team = Property(name="team", data_type=DataType.TEXT, tokenization=Tokenization.FIELD)
            if self._client.collections.exists(name):
                # A collection made before documents had a team: add the property before an insert
                # would (auto-schema tokenizes by word). Objects stored before have no team: only
                # readers of every team find them until they are indexed again.
                collection = self._client.collections.get(name)
                if all(p.name != "team" for p in collection.config.get().properties):
                    collection.config.add_property(team)
                return
            self._client.collections.create(
                name,
                vector_config=Configure.Vectors.self_provided(
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
                ),
                properties=[
                    Property(name="document_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="start_offset", data_type=DataType.INT),
                    Property(name="end_offset", data_type=DataType.INT),
                    Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="tlp", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="investigation_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
                    Property(name="collected_at", data_type=DataType.NUMBER),
                    team,
                ],
            )

        await asyncio.to_thread(create)
        self._collections[model] = name

    def _name(self, model: str) -> str:
        if model not in self._collections:
            raise KeyError(f"model {model!r} has no Weaviate collection; prepare() it first")
        return self._collections[model]

    async def upsert(self, model: str, chunks: list[ChunkPayload], vectors: Vectors) -> None:
        from weaviate.classes.data import DataObject

        collection = self._client.collections.get(self._name(model))
        objects: list[Any] = [
            DataObject(
                uuid=c.chunk_id,
                vector=v.tolist(),
                properties={
                    "document_id": c.document_id, "start_offset": c.start, "end_offset": c.end, "source": c.source,
                    "tlp": c.tlp, "investigation_id": c.investigation_id,
                    "collected_at": c.collected_at.timestamp(), "team": _weaviate_team(c.team),
                },
            )
            for c, v in zip(chunks, vectors, strict=True)
        ]

        def insert() -> None:
            result = collection.data.insert_many(objects)
            if result.has_errors:
                first = next(iter(result.errors.values()))
                raise RuntimeError(f"weaviate insert failed for {len(result.errors)} objects: {first.message}")

        await asyncio.to_thread(insert)

    async def search(self, model: str, vector: Vectors, k: int, filters: SearchFilter) -> list[VectorHit]:
        from weaviate.classes.query import Filter, MetadataQuery

        conditions = []
        if filters.sources:
            conditions.append(Filter.by_property("source").contains_any(list(filters.sources)))
        if filters.tlp:
            conditions.append(Filter.by_property("tlp").contains_any(list(filters.tlp)))
        if filters.investigation_id:
            conditions.append(Filter.by_property("investigation_id").equal(filters.investigation_id))
        if filters.collected_after:
            conditions.append(Filter.by_property("collected_at").greater_or_equal(filters.collected_after.timestamp()))
        if filters.collected_before:
            conditions.append(Filter.by_property("collected_at").less_than(filters.collected_before.timestamp()))
        if filters.teams:
            conditions.append(Filter.by_property("team").contains_any([_weaviate_team(t) for t in filters.teams]))
        collection = self._client.collections.get(self._name(model))
        response = await asyncio.to_thread(
            collection.query.near_vector,
            near_vector=vector.tolist(), limit=k,
            filters=Filter.all_of(conditions) if conditions else None,
            return_metadata=MetadataQuery(distance=True),
        )
        return [VectorHit(str(o.uuid), 1.0 - float(o.metadata.distance or 0.0)) for o in response.objects]

    async def delete_document(self, document_id: str) -> None:
        from weaviate.classes.query import Filter

        for name in self._collections.values():
            collection = self._client.collections.get(name)
            await asyncio.to_thread(
                collection.data.delete_many, where=Filter.by_property("document_id").equal(document_id)
            )

    async def count(self, model: str) -> int:
        collection = self._client.collections.get(self._name(model))
        result = await asyncio.to_thread(collection.aggregate.over_all, total_count=True)
        return int(result.total_count or 0)

    async def drop(self, model: str) -> None:
        await asyncio.to_thread(self._client.collections.delete, self.collection(model))
        self._collections.pop(model, None)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


def _weaviate_team(team: str) -> str:
    return f"team:{team}"
