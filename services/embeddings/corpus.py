"""The corpus: ingest (extract, normalise, dedup, chunk, embed, store) and hybrid search.

Documents and chunks (with character offsets and a full-text tsvector) live in PostgreSQL
(schema `corpus`, see schema.py); chunk vectors live in the configured VectorIndex. Search fuses
the vector ranking and PostgreSQL's full-text ranking with reciprocal rank fusion, and every hit
carries what a reader needs to check it: document id, title, URI and the offsets of the excerpt
in the stored text.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bev.vocab import Tlp
from services.embeddings.chunking import chunk_text
from services.embeddings.documents import extract
from services.embeddings.registry import ServedModel
from services.embeddings.vector_index import ChunkPayload, SearchFilter, VectorIndex, Vectors, pg_filter_sql

RRF_K = 60  # the constant from Cormack et al. (2009); dampens the weight of the very top ranks
# Embed a long document in slices so it never holds more than this many texts of the shared queue.
_INGEST_SLICE = 128


class DocumentTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class NewDocument:
    content: bytes
    media_type: str = ""
    filename: str = ""
    title: str = ""
    uri: str = ""
    source: str = ""
    collected_at: datetime | None = None
    tlp: Tlp = Tlp.CLEAR
    investigation_id: str = ""


@dataclass(frozen=True)
class IngestResult:
    document_id: str
    duplicate: bool
    chunks: int
    title: str


@dataclass(frozen=True)
class StoredDocument:
    id: str
    title: str
    uri: str
    source: str
    media_type: str
    tlp: str
    investigation_id: str
    collected_at: datetime
    ingested_at: datetime
    content_hash: str
    text: str
    chunks: int


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    document_id: str
    title: str
    uri: str
    start: int
    end: int
    excerpt: str
    score: float
    source: str
    tlp: str
    investigation_id: str
    collected_at: datetime


class SearchMode(Enum):
    HYBRID = "hybrid"
    VECTOR = "vector"
    TEXT = "text"


def reciprocal_rank_fusion(*rankings: list[str], k: int = RRF_K) -> list[tuple[str, float]]:
    """Fuse rankings (best first) by sum of 1 / (k + rank); rank starts at 1. Best first."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


async def open_pool(dsn: str, max_size: int = 8) -> AsyncConnectionPool[Any]:
    """A psycopg pool whose connections speak pgvector (numpy arrays <-> vector)."""
    from pgvector.psycopg import register_vector_async

    async def configure(conn: Any) -> None:
        await register_vector_async(conn)
        await conn.set_autocommit(True)

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=max_size, configure=configure, open=False
    )
    await pool.open(wait=True, timeout=15)
    return pool


class Corpus:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        index: VectorIndex,
        model: ServedModel,
        *,
        chunk_chars: int,
        chunk_overlap: int,
        max_document_bytes: int,
    ) -> None:
        self.pool = pool
        self.index = index
        self.model = model
        self.chunk_chars = chunk_chars
        self.chunk_overlap = chunk_overlap
        self.max_document_bytes = max_document_bytes

    async def prepare(self) -> None:
        await self.index.prepare(self.model.name, self.model.embedder.dimensions)

    # -- ingest -------------------------------------------------------------------------------

    async def ingest(self, doc: NewDocument) -> IngestResult:
        """Store ``doc`` unless its normalised text is already stored. Raises UnsupportedMediaType,
        UnreadableDocument or DocumentTooLarge for the caller's mistakes."""
        if len(doc.content) > self.max_document_bytes:
            raise DocumentTooLarge(f"document is {len(doc.content)} bytes; at most {self.max_document_bytes}")
        tlp = Tlp(doc.tlp).value  # stored, and in vector payloads, as its lower-case label
        extracted = await asyncio.to_thread(extract, doc.content, doc.media_type, doc.filename, doc.title)
        existing = await self._find_by_hash(extracted.content_hash)
        if existing is not None:
            return IngestResult(existing[0], True, existing[1], existing[2])
        chunks = chunk_text(extracted.text, self.chunk_chars, self.chunk_overlap)
        vectors: list[Vectors] = []
        for start in range(0, len(chunks), _INGEST_SLICE):
            part = [c.text for c in chunks[start : start + _INGEST_SLICE]]
            vectors.append((await self.model.batcher.embed(part)).vectors)
        document_id = str(uuid.uuid4())
        chunk_ids = [str(uuid.uuid4()) for _ in chunks]
        collected_at = doc.collected_at or datetime.now(UTC)
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "insert into corpus.documents (id, content_hash, title, uri, source, media_type, tlp, "
                "investigation_id, collected_at, text) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "on conflict (content_hash) do nothing returning id",
                (document_id, extracted.content_hash, extracted.title, doc.uri or f"bev:document/{document_id}",
                 doc.source, extracted.media_type, tlp, doc.investigation_id, collected_at, extracted.text),
            )).fetchone()
            if row is not None:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "insert into corpus.chunks (id, document_id, seq, start_offset, end_offset, text) "
                        "values (%s, %s, %s, %s, %s, %s)",
                        [(cid, document_id, c.seq, c.start, c.end, c.text) for cid, c in zip(chunk_ids, chunks, strict=True)],
                    )
        if row is None:  # another caller stored the same text between our check and insert
            existing = await self._find_by_hash(extracted.content_hash)
            if existing is None:
                raise RuntimeError("a concurrent ingest of the same text vanished; retry")
            return IngestResult(existing[0], True, existing[1], existing[2])
        payloads = [
            ChunkPayload(cid, document_id, c.start, c.end, doc.source, tlp, doc.investigation_id, collected_at)
            for cid, c in zip(chunk_ids, chunks, strict=True)
        ]
        try:
            await self.index.upsert(self.model.name, payloads, _stack(vectors, self.model.embedder.dimensions))
        except BaseException:
            await self.delete_document(document_id)  # no document without its vectors
            raise
        return IngestResult(document_id, False, len(chunks), extracted.title)

    async def _find_by_hash(self, content_hash: str) -> tuple[str, int, str] | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "select d.id::text, (select count(*) from corpus.chunks c where c.document_id = d.id), d.title "
                "from corpus.documents d where d.content_hash = %s",
                (content_hash,),
            )).fetchone()
        return (row[0], int(row[1]), row[2]) if row else None

    # -- documents ------------------------------------------------------------------------------

    async def get_document(self, document_id: str) -> StoredDocument | None:
        if not _is_uuid(document_id):
            return None
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "select d.id::text as id, title, uri, source, media_type, tlp, investigation_id, collected_at, "
                "ingested_at, content_hash, d.text, (select count(*) from corpus.chunks c where c.document_id = d.id) "
                "as chunks from corpus.documents d where d.id = %s",
                (document_id,),
            )
            row = await cur.fetchone()
        return StoredDocument(**row) if row else None

    async def delete_document(self, document_id: str) -> int | None:
        """Delete a document, its chunks and their vectors; the chunk count, or None if absent."""
        if not _is_uuid(document_id):
            return None
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "select count(*) from corpus.chunks where document_id = %s", (document_id,)
            )).fetchone()
            deleted = await conn.execute("delete from corpus.documents where id = %s", (document_id,))
        if deleted.rowcount == 0:
            return None
        await self.index.delete_document(document_id)
        return int(row[0]) if row else 0

    async def counts(self) -> tuple[int, int]:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "select (select count(*) from corpus.documents), (select count(*) from corpus.chunks)"
            )).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # -- search ---------------------------------------------------------------------------------

    async def search(self, query: str, k: int, filters: SearchFilter, mode: SearchMode = SearchMode.HYBRID) -> list[SearchHit]:
        candidates = max(4 * k, 50)
        vector_ids: list[str] = []
        text_ids: list[str] = []
        scores: dict[str, float] = {}
        if mode in (SearchMode.HYBRID, SearchMode.VECTOR):
            query_vector = (await self.model.batcher.embed([query])).vectors[0]
            for hit in await self.index.search(self.model.name, query_vector, candidates, filters):
                vector_ids.append(hit.chunk_id)
                scores[hit.chunk_id] = hit.score
        if mode in (SearchMode.HYBRID, SearchMode.TEXT):
            for chunk_id, rank in await self._text_search(query, candidates, filters):
                text_ids.append(chunk_id)
                scores[chunk_id] = rank
        if mode is SearchMode.HYBRID:
            ranked = reciprocal_rank_fusion(vector_ids, text_ids)[:k]
        else:
            ranked = [(cid, scores[cid]) for cid in (vector_ids or text_ids)[:k]]
        rows = await self._chunks(cid for cid, _ in ranked)
        return [
            SearchHit(score=score, **rows[cid]) for cid, score in ranked if cid in rows
        ]

    async def _text_search(self, query: str, n: int, filters: SearchFilter) -> list[tuple[str, float]]:
        # Any of the query's terms matches (OR): analysts type questions, and requiring every word
        # would leave the full-text side empty for most of them. Chunks holding every term rank
        # first (+1), then by ts_rank over the terms they hold.
        where, params = pg_filter_sql(filters)
        statement = sql.SQL(
            "select c.id::text, ts_rank(c.tsv, t.any_term) + (c.tsv @@ t.all_terms)::int as rank "
            "from corpus.chunks c join corpus.documents d on d.id = c.document_id cross join lateral "
            "(select q as all_terms, replace(q::text, ' & ', ' | ')::tsquery as any_term "
            " from plainto_tsquery('english', %(query)s) q) t "
            "where c.tsv @@ t.any_term {where} order by rank desc, c.id limit %(n)s"
        ).format(where=where)
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(statement, {**params, "query": query, "n": n})).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    async def _chunks(self, chunk_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(chunk_ids)
        if not ids:
            return {}
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "select c.id::text as chunk_id, d.id::text as document_id, d.title, d.uri, c.start_offset as start, "
                "c.end_offset as end, c.text as excerpt, d.source, d.tlp, d.investigation_id, d.collected_at "
                "from corpus.chunks c join corpus.documents d on d.id = c.document_id where c.id = any(%s::uuid[])",
                (ids,),
            )
            return {row["chunk_id"]: row for row in await cur.fetchall()}


def _stack(parts: list[Vectors], dimensions: int) -> Vectors:
    return np.vstack(parts) if parts else np.zeros((0, dimensions), dtype=np.float32)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
