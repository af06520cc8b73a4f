"""The corpus: ingest (extract, normalise, dedup, chunk, embed, store) and hybrid search.

Documents and chunks (with character offsets and a full-text tsvector) live in PostgreSQL
(schema `corpus`, see schema.py); chunk vectors live in the configured VectorIndex. Search fuses
the vector ranking and PostgreSQL's full-text ranking with reciprocal rank fusion, and every hit
carries what a reader needs to check it: document id, title, URI and the offsets of the excerpt
in the stored text.

Every document belongs to a team ('' = the shared corpus: collected, fed, or an admin's upload) and
carries a TLP label. A reader (``Access``) sees the shared corpus and its own team's documents up to
its label ceiling: searches filter on that inside the SQL and the vector index (so k visible hits
come back whenever there are k), and a document it may not see reads as absent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import numpy as np
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bev.vocab import Tlp
from services.embeddings.batching import QueueFull
from services.embeddings.chunking import Chunk, chunk_text
from services.embeddings.documents import Extracted, extract
from services.embeddings.registry import ServedModel
from services.embeddings.vector_index import ChunkPayload, SearchFilter, VectorIndex, Vectors, pg_filter_sql

RRF_K = 60  # the constant from Cormack et al. (2009); dampens the weight of the very top ranks
# A background ingest that finds the model's queue full waits this long before trying again.
_QUEUE_FULL_BACKOFF_S = 0.2


class DocumentTooLarge(ValueError):
    pass


class SharedDocument(PermissionError):
    """A team's key tried to delete a document of the shared corpus (only an admin or a service may)."""


@dataclass(frozen=True)
class Access:
    """Who reads or writes the corpus (bev.common.v1.Access): a team ('' = every team: an admin's
    key, or another service) and the most restrictive label it may read (None = any)."""

    team: str = ""
    max_tlp: Tlp | None = None

    def may_read(self, team: str, tlp: str) -> bool:
        """A document (or job) of ``team`` ('' = shared) labelled ``tlp``."""
        return ((not self.team or team in ("", self.team))
                and (self.max_tlp is None or Tlp(tlp).rank <= self.max_tlp.rank))

    def narrow(self, filters: SearchFilter) -> SearchFilter | None:
        """``filters`` narrowed to what this reader may read; None when nothing is left."""
        teams, tlp = filters.teams, filters.tlp
        if self.team:
            teams = [t for t in (teams or ["", self.team]) if t in ("", self.team)]
        if self.max_tlp is not None:
            readable = [t.value for t in Tlp.ordered() if t.rank <= self.max_tlp.rank]
            tlp = [t for t in (tlp or readable) if t in readable]
        if (self.team and not teams) or (self.max_tlp is not None and not tlp):
            return None
        return dataclasses.replace(filters, teams=teams, tlp=tlp)


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
    team: str = ""  # the uploader's team; '' = the shared corpus


@dataclass(frozen=True)
class IngestResult:
    document_id: str
    duplicate: bool
    chunks: int
    title: str


@dataclass(frozen=True)
class ReadDocument:
    """A document read and chunked, not stored yet."""

    extracted: Extracted
    chunks: list[Chunk]


@dataclass(frozen=True)
class StoredChunk:
    id: str
    seq: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class DocumentMeta:
    """A stored document's fields that every vector payload of its chunks carries."""

    id: str
    title: str
    source: str
    tlp: str  # the lower-case label
    investigation_id: str
    collected_at: datetime
    chunks: int
    team: str


@dataclass(frozen=True)
class Stored:
    meta: DocumentMeta
    chunks: list[StoredChunk]  # empty for a duplicate
    duplicate: bool


# Called with the number of chunks indexed so far.
Progress = Callable[[int], Awaitable[None]]
# Runs inside the transaction that stores a document: (connection, document id, chunks).
InTransaction = Callable[[AsyncConnection[Any], str, int], Awaitable[None]]


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
    team: str


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
    team: str


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
        pipeline_depth: int = 3,
    ) -> None:
        self.pool = pool
        self.index = index
        self.model = model
        self.chunk_chars = chunk_chars
        self.chunk_overlap = chunk_overlap
        self.max_document_bytes = max_document_bytes
        self.pipeline_depth = pipeline_depth

    async def prepare(self) -> None:
        await self.index.prepare(self.model.name, self.model.embedder.dimensions)

    # -- ingest -------------------------------------------------------------------------------
    #
    # Two paths share these steps. Ingest/IngestStream (synchronous) read the document, embed every
    # chunk, then store the document, its chunks and their vectors: a failure leaves nothing. An
    # ingest job (jobs.py) stores the document and its chunks first, recording the document on the
    # job in the same transaction, then embeds and indexes the chunks in order, counting them on
    # the job: a job taken over from a worker that died resumes after the last counted chunk.
    # Either way chunks are embedded in full model batches, a window of a few batches at a time
    # with the next window queued while one is stored (the model never waits for storage); chunk
    # rows go in with one COPY, vectors in one batched upsert per window.

    async def read(self, doc: NewDocument) -> ReadDocument:
        """Extract, normalise and chunk ``doc`` (in a worker thread). Raises UnsupportedMediaType,
        UnreadableDocument or DocumentTooLarge for the caller's mistakes."""
        if len(doc.content) > self.max_document_bytes:
            raise DocumentTooLarge(f"document is {len(doc.content)} bytes; at most {self.max_document_bytes}")

        def work() -> ReadDocument:
            extracted = extract(doc.content, doc.media_type, doc.filename, doc.title)
            return ReadDocument(extracted, chunk_text(extracted.text, self.chunk_chars, self.chunk_overlap))

        return await asyncio.to_thread(work)

    async def ingest(self, doc: NewDocument) -> IngestResult:
        """Store ``doc`` unless it duplicates a stored document (see find_duplicate); returns when it
        is searchable. Raises UnsupportedMediaType, UnreadableDocument or DocumentTooLarge for the
        caller's mistakes, QueueFull when the model's queue is full."""
        read = await self.read(doc)
        existing = await self.find_duplicate(doc, read.extracted.content_hash)
        if existing is not None:
            return existing
        texts = [c.text for c in read.chunks]
        parts: list[Vectors] = []
        async with aclosing(self._embedded_slices(texts, wait_when_full=False)) as slices:
            async for _, vectors in slices:
                parts.append(vectors)
        stored = await self.store(read, doc)
        if stored.duplicate:  # another caller stored the same text while we embedded
            return IngestResult(stored.meta.id, True, stored.meta.chunks, stored.meta.title)
        try:
            await self.index.upsert(self.model.name, [_payload(stored.meta, c) for c in stored.chunks],
                                    _stack(parts, self.model.embedder.dimensions))
        except BaseException:
            await self._delete(stored.meta.id)  # no document without its vectors
            raise
        return IngestResult(stored.meta.id, False, len(stored.chunks), stored.meta.title)

    async def store(self, read: ReadDocument, doc: NewDocument, in_transaction: InTransaction | None = None) -> Stored:
        """Insert the document and its chunks (COPY) in one transaction, unless the same team stored
        its text at its label already (then ``duplicate``, with the document find_duplicate answers).
        ``in_transaction(conn, document_id, chunks)`` runs inside the same transaction (an ingest job
        records the document there)."""
        document_id = str(uuid.uuid4())
        tlp = Tlp(doc.tlp).value  # stored, and in vector payloads, as its lower-case label
        collected_at = doc.collected_at or datetime.now(UTC)
        extracted = read.extracted
        chunks = [StoredChunk(str(uuid.uuid4()), c.seq, c.start, c.end, c.text) for c in read.chunks]
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "insert into corpus.documents (id, team, content_hash, title, uri, source, media_type, tlp, "
                "investigation_id, collected_at, text) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "on conflict (team, content_hash, tlp) do nothing returning id",
                (document_id, doc.team, extracted.content_hash, extracted.title,
                 doc.uri or f"bev:document/{document_id}", doc.source, extracted.media_type, tlp,
                 doc.investigation_id, collected_at, extracted.text),
            )).fetchone()
            if row is not None:
                async with conn.cursor() as cur, cur.copy(
                    "copy corpus.chunks (id, document_id, seq, start_offset, end_offset, text) from stdin"
                ) as copy:
                    for c in chunks:
                        await copy.write_row((c.id, document_id, c.seq, c.start, c.end, c.text))
                if in_transaction is not None:
                    await in_transaction(conn, document_id, len(chunks))
        if row is None:  # the same text is stored already (or was, a moment ago, by another caller)
            existing = await self.find_duplicate(doc, extracted.content_hash)
            if existing is None:
                raise RuntimeError("a concurrent ingest of the same text vanished; retry")
            meta = DocumentMeta(existing.document_id, existing.title, "", "", "", collected_at, existing.chunks,
                                doc.team)
            return Stored(meta, [], duplicate=True)
        meta = DocumentMeta(document_id, extracted.title, doc.source, tlp, doc.investigation_id, collected_at,
                            len(chunks), doc.team)
        return Stored(meta, chunks, duplicate=False)

    async def stored_chunks(self, document_id: str, from_seq: int = 0) -> tuple[DocumentMeta, list[StoredChunk]] | None:
        """A stored document's payload fields and its chunks from ``from_seq`` on (in order); None
        if the document is gone."""
        if not _is_uuid(document_id):
            return None
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "select d.id::text, d.title, d.source, d.tlp, d.investigation_id, d.collected_at, "
                "(select count(*) from corpus.chunks c where c.document_id = d.id), d.team "
                "from corpus.documents d where d.id = %s",
                (document_id,),
            )).fetchone()
            if row is None:
                return None
            rows = await (await conn.execute(
                "select id::text, seq, start_offset, end_offset, text from corpus.chunks "
                "where document_id = %s and seq >= %s order by seq",
                (document_id, from_seq),
            )).fetchall()
        meta = DocumentMeta(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), row[7])
        return meta, [StoredChunk(r[0], int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows]

    async def index_chunks(self, meta: DocumentMeta, chunks: list[StoredChunk], on_progress: Progress | None = None) -> None:
        """Embed ``chunks`` (in order) and upsert their vectors window by window; after each window,
        ``on_progress(chunks indexed so far)``, counting chunks before ``chunks[0]`` as indexed.
        Waits (rather than failing) while the model's queue is full: this is background work."""
        async with aclosing(self._embedded_slices([c.text for c in chunks], wait_when_full=True)) as slices:
            async for start, vectors in slices:
                part = chunks[start : start + len(vectors)]
                await self.index.upsert(self.model.name, [_payload(meta, c) for c in part], vectors)
                if on_progress is not None:
                    await on_progress(part[-1].seq + 1)

    async def _embedded_slices(self, texts: list[str], *, wait_when_full: bool) -> AsyncGenerator[tuple[int, Vectors]]:
        """(offset, vectors) for ``texts``, in order, a window of (pipeline_depth + 1) model batches
        at a time. Within a window the texts are embedded shortest first, so each batch pads to
        texts of about its own length (a sixth less work than document order on prose); while the
        caller stores one window, the model works on the next (up to pipeline_depth + 1 batches
        queued at the model, never more)."""
        size = self.model.batcher.max_batch
        window = size * (self.pipeline_depth + 1)
        # Batches in the order they are queued: (window start, positions within the window).
        batches: deque[tuple[int, list[int]]] = deque()
        for start in range(0, len(texts), window):
            order = sorted(range(start, min(start + window, len(texts))), key=lambda i: len(texts[i]))
            batches.extend((start, order[i : i + size]) for i in range(0, len(order), size))
        queued: deque[tuple[int, list[int], asyncio.Task[Vectors]]] = deque()
        parts: dict[int, Vectors] = {}
        try:
            while batches or queued:
                while batches and len(queued) <= self.pipeline_depth:
                    start, positions = batches.popleft()
                    task = asyncio.create_task(self._embed([texts[i] for i in positions], wait_when_full))
                    queued.append((start, positions, task))
                start, positions, task = queued.popleft()
                vectors = await task
                parts.update(zip(positions, vectors, strict=True))
                end = min(start + window, len(texts))
                if len(parts) == end - start:  # the whole window is embedded: back in text order
                    yield start, np.stack([parts[i] for i in range(start, end)])
                    parts = {}
        finally:
            for _, _, task in queued:
                task.cancel()
            await asyncio.gather(*(task for _, _, task in queued), return_exceptions=True)

    async def _embed(self, texts: list[str], wait_when_full: bool) -> Vectors:
        while True:
            try:
                return (await self.model.batcher.embed(texts)).vectors
            except QueueFull:
                if not wait_when_full:
                    raise
                await asyncio.sleep(_QUEUE_FULL_BACKOFF_S)

    async def find_duplicate(self, doc: NewDocument, content_hash: str) -> IngestResult | None:
        """The stored document ``doc`` (whose normalised text hashes to ``content_hash``) duplicates,
        as a duplicate result: the oldest with the same text, of the same team ('' = shared), at a
        label no higher than ``doc``'s. Whoever may store ``doc`` may read it; another team's
        document, or one more restricted, is never answered (its id would tell that the text is
        there), so those store their own copy."""
        readable = [t.value for t in Tlp.ordered() if t.rank <= Tlp(doc.tlp).rank]
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "select d.id::text, (select count(*) from corpus.chunks c where c.document_id = d.id), d.title "
                "from corpus.documents d where d.team = %s and d.content_hash = %s and d.tlp = any(%s) "
                "order by d.ingested_at, d.id limit 1",
                (doc.team, content_hash, readable),
            )).fetchone()
        return IngestResult(row[0], True, int(row[1]), row[2]) if row else None

    # -- documents ------------------------------------------------------------------------------

    async def get_document(self, document_id: str, access: Access) -> StoredDocument | None:
        """The document, or None if there is none or ``access`` may not read it (the same answer)."""
        if not _is_uuid(document_id):
            return None
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "select d.id::text as id, title, uri, source, media_type, tlp, investigation_id, collected_at, "
                "ingested_at, content_hash, d.text, (select count(*) from corpus.chunks c where c.document_id = d.id) "
                "as chunks, team from corpus.documents d where d.id = %s",
                (document_id,),
            )
            row = await cur.fetchone()
        if row is None or not access.may_read(row["team"], row["tlp"]):
            return None
        return StoredDocument(**row)

    async def delete_document(self, document_id: str, access: Access) -> int | None:
        """Delete a document, its chunks and their vectors; the chunk count, or None if there is no
        such document or ``access`` may not read it. SharedDocument when a team's key asks to
        delete a document of the shared corpus."""
        if not _is_uuid(document_id):
            return None
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "select team, tlp, (select count(*) from corpus.chunks c where c.document_id = d.id) "
                "from corpus.documents d where d.id = %s for update",
                (document_id,),
            )).fetchone()
            if row is None or not access.may_read(row[0], row[1]):
                return None
            if access.team and not row[0]:
                raise SharedDocument(f"document {document_id!r} is in the shared corpus: only an admin may delete it")
            await conn.execute("delete from corpus.documents where id = %s", (document_id,))
        await self.index.delete_document(document_id)
        return int(row[2])

    async def _delete(self, document_id: str) -> None:
        """Delete a document this service stored a moment ago (its ingest failed)."""
        async with self.pool.connection() as conn:
            await conn.execute("delete from corpus.documents where id = %s", (document_id,))
        await self.index.delete_document(document_id)

    async def counts(self) -> tuple[int, int]:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "select (select count(*) from corpus.documents), (select count(*) from corpus.chunks)"
            )).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # -- search ---------------------------------------------------------------------------------

    async def search(self, query: str, k: int, filters: SearchFilter, mode: SearchMode = SearchMode.HYBRID, *,
                     access: Access) -> list[SearchHit]:
        """The k best chunks ``access`` may read that pass ``filters``: the reader's team and label
        ceiling are filters too, applied by the vector index and the full-text query themselves."""
        narrowed = access.narrow(filters)
        if narrowed is None:  # e.g. asked only for labels above the reader's ceiling
            return []
        filters = narrowed
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
            # RRF reads only ranks, so with near-duplicate chunks (a log, a feed) the vector side's
            # noise can bury the one chunk that holds every term an analyst typed (an IP, a port,
            # a hash). Those chunks (text score >= 1, see _text_search) rank first, by RRF among
            # themselves, and their score carries the same +1 so scores stay in order.
            exact = {cid for cid in text_ids if scores[cid] >= 1.0}
            fused = [(cid, score + (cid in exact)) for cid, score in reciprocal_rank_fusion(vector_ids, text_ids)]
            ranked = sorted(fused, key=lambda item: -item[1])[:k]
        else:
            ranked = [(cid, scores[cid]) for cid in (vector_ids or text_ids)[:k]]
        rows = await self._chunks(cid for cid, _ in ranked)
        # Every ranked chunk passed the filters already; checking again costs nothing and keeps a
        # stale payload in an external vector backend from showing a reader what it may not see.
        return [
            SearchHit(score=score, **rows[cid]) for cid, score in ranked
            if cid in rows and access.may_read(rows[cid]["team"], rows[cid]["tlp"])
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
                "c.end_offset as end, c.text as excerpt, d.source, d.tlp, d.investigation_id, d.collected_at, d.team "
                "from corpus.chunks c join corpus.documents d on d.id = c.document_id where c.id = any(%s::uuid[])",
                (ids,),
            )
            return {row["chunk_id"]: row for row in await cur.fetchall()}


def _payload(meta: DocumentMeta, chunk: StoredChunk) -> ChunkPayload:
    return ChunkPayload(chunk.id, meta.id, chunk.start, chunk.end, meta.source, meta.tlp, meta.investigation_id,
                        meta.collected_at, meta.team)


def _stack(parts: list[Vectors], dimensions: int) -> Vectors:
    return np.vstack(parts) if parts else np.zeros((0, dimensions), dtype=np.float32)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
