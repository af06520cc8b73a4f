"""Embeddings: the model registry with micro-batching, and the corpus (ingest, hybrid search)."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from psycopg_pool import AsyncConnectionPool

from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsServicer
from bev.media_types import resolve_media_type
from bev.rpc import CallContext, InstanceInfo, RpcError, StatusCode
from bev.runtime import ServiceRuntime, StartupError
from bev.vocab import Tlp, UnknownTlp
from services.embeddings.batching import Embedded, QueueFull
from services.embeddings.corpus import (
    Access,
    Corpus,
    DocumentTooLarge,
    IngestResult,
    NewDocument,
    SearchMode,
    SharedDocument,
    open_pool,
)
from services.embeddings.documents import UnreadableDocument, UnsupportedMediaType
from services.embeddings.jobs import IngestEvents, IngestJob, IngestWorkers, JobStatus, JobStore
from services.embeddings.registry import ModelRegistry
from services.embeddings.schema import migrate
from services.embeddings.settings import EmbeddingsConfig, Settings
from services.embeddings.vector_index import (
    PgVectorIndex,
    QdrantIndex,
    SearchFilter,
    VectorIndex,
    WeaviateIndex,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

MAX_K = 100
INGEST_STREAM_WINDOW = 4  # documents an IngestStream works on at once
_MODES = {
    embeddings_pb2.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
    embeddings_pb2.SEARCH_MODE_VECTOR: SearchMode.VECTOR,
    embeddings_pb2.SEARCH_MODE_TEXT: SearchMode.TEXT,
}
_JOB_STATUS = {
    JobStatus.QUEUED: embeddings_pb2.INGEST_JOB_STATUS_QUEUED,
    JobStatus.RUNNING: embeddings_pb2.INGEST_JOB_STATUS_RUNNING,
    JobStatus.COMPLETED: embeddings_pb2.INGEST_JOB_STATUS_COMPLETED,
    JobStatus.FAILED: embeddings_pb2.INGEST_JOB_STATUS_FAILED,
}


class Embeddings(EmbeddingsServicer):
    def __init__(self, info: InstanceInfo, config: EmbeddingsConfig, models: ModelRegistry, corpus: Corpus,
                 events: IngestEvents | None = None) -> None:
        super().__init__(info)
        self.config = config
        self.models = models
        self.corpus = corpus
        self.jobs = JobStore(corpus.pool, config.ingest_lease_s)
        self.events = events or IngestEvents(None)
        self.workers = IngestWorkers(self.jobs, corpus, self.events, instance=info.instance, config=config)

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        checks = [
            common_pb2.HealthCheck(name=f"model:{m.name}", ok=True, detail=f"{m.name} on {m.embedder.device}")
            for m in self.models
        ]
        try:
            async with self.corpus.pool.connection(timeout=2) as conn:
                await conn.execute("select 1")
            checks.append(common_pb2.HealthCheck(name="postgres", ok=True, detail="corpus schema reachable"))
        except Exception as exc:  # reported, not raised: Health answers DEGRADED
            checks.append(common_pb2.HealthCheck(name="postgres", ok=False, detail=_one_line(exc)))
        return checks

    async def start(self) -> None:
        self.workers.start()

    async def close(self) -> None:
        await self.workers.close()
        await self.events.close()
        await self.models.close()
        await self.corpus.index.close()
        await self.corpus.pool.close()

    # -- embeddings -----------------------------------------------------------------------------

    async def Embed(self, request: embeddings_pb2.EmbedRequest, ctx: CallContext) -> embeddings_pb2.EmbedResponse:
        try:
            model = self.models.get(request.model)
        except KeyError as exc:
            raise RpcError(StatusCode.NOT_FOUND, str(exc.args[0])) from None
        if not request.texts:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "texts is empty")
        if len(request.texts) > self.config.max_texts:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"{len(request.texts)} texts; at most {self.config.max_texts} per call")
        embedded = await _embed(model.batcher.embed, list(request.texts))
        return embeddings_pb2.EmbedResponse(
            model=model.name,
            dimensions=model.embedder.dimensions,
            vectors=[embeddings_pb2.Vector(values=row.tolist()) for row in embedded.vectors],
            total_tokens=embedded.tokens,
        )

    async def ListModels(self, request: embeddings_pb2.ListModelsRequest, ctx: CallContext) -> embeddings_pb2.ListModelsResponse:
        return embeddings_pb2.ListModelsResponse(models=[
            embeddings_pb2.EmbeddingModel(name=m.name, dimensions=m.embedder.dimensions,
                                          max_tokens=m.embedder.max_tokens, device=m.embedder.device)
            for m in self.models
        ])

    # -- corpus ---------------------------------------------------------------------------------

    async def Ingest(self, request: embeddings_pb2.IngestRequest, ctx: CallContext) -> embeddings_pb2.IngestResponse:
        if not request.HasField("document") or not request.document.content:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "document.content is empty")
        access = _access(request.access)
        new = self._new_document(request.document, access)
        _may_store(new.tlp, access)
        result = await self._ingest(new)
        return embeddings_pb2.IngestResponse(document_id=result.document_id, duplicate=result.duplicate,
                                             chunks=result.chunks, title=result.title)

    async def SubmitIngest(self, request: embeddings_pb2.SubmitIngestRequest, ctx: CallContext) -> embeddings_pb2.IngestJob:
        if not request.HasField("document") or not request.document.content:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "document.content is empty")
        access = _access(request.access)
        new = self._new_document(request.document, access)
        _may_store(new.tlp, access)
        if len(new.content) > self.config.max_document_bytes:
            raise RpcError(StatusCode.INVALID_ARGUMENT,
                           f"document is {len(new.content)} bytes; at most {self.config.max_document_bytes}")
        try:  # refused now rather than failed later: the type is known from the request alone
            media_type = resolve_media_type(new.media_type, new.filename, new.content)
        except UnsupportedMediaType as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        job = await self.jobs.submit(dataclasses.replace(new, media_type=media_type))
        self.workers.wake()
        self.events.publish(job, "queued")
        return _job_message(job)

    async def GetIngestJob(self, request: embeddings_pb2.GetIngestJobRequest, ctx: CallContext) -> embeddings_pb2.IngestJob:
        access = _access(request.access)
        job = await self.jobs.get(request.job_id)
        if job is None or not job.visible_to(access):  # another team's job is as absent as an unknown one
            raise RpcError(StatusCode.NOT_FOUND, f"no ingest job {request.job_id!r}")
        return _job_message(job)

    async def IngestStream(
        self, request: embeddings_pb2.IngestStreamRequest, ctx: CallContext
    ) -> AsyncIterator[embeddings_pb2.IngestProgress]:
        total = len(request.documents)
        if total == 0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "documents is empty")
        access = _access(request.access)
        # The whole request is refused before anything is stored if the caller may not read one of
        # its documents: that is the caller's key, not one bad document among good ones.
        for index, document in enumerate(request.documents):
            try:
                tlp = Tlp.from_proto(document.tlp, Tlp.CLEAR)
            except UnknownTlp:
                continue  # that document's own event reports it
            _may_store(tlp, access, f"documents[{index}]")
        # A few documents in flight: one's extraction and storage overlap another's embedding, and
        # their chunks share micro-batches. Events still come in request order.
        in_flight: deque[asyncio.Task[embeddings_pb2.IngestProgress]] = deque()
        try:
            for index, document in enumerate(request.documents):
                in_flight.append(asyncio.create_task(self._ingest_progress(index, total, document, access)))
                if len(in_flight) >= INGEST_STREAM_WINDOW:
                    yield await in_flight.popleft()
            while in_flight:
                yield await in_flight.popleft()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _ingest_progress(
        self, index: int, total: int, document: embeddings_pb2.DocumentInput, access: Access
    ) -> embeddings_pb2.IngestProgress:
        progress = embeddings_pb2.IngestProgress(index=index, total=total, filename=document.filename)
        try:
            if not document.content:
                raise RpcError(StatusCode.INVALID_ARGUMENT, "content is empty")
            result = await self._ingest(self._new_document(document, access))
        except RpcError as exc:
            if exc.code is not StatusCode.INVALID_ARGUMENT:
                raise  # the service cannot go on (queue full, store down): the stream ends with it
            progress.error = exc.message
        else:
            progress.document_id = result.document_id
            progress.duplicate = result.duplicate
            progress.chunks = result.chunks
        return progress

    async def _ingest(self, new: NewDocument) -> IngestResult:
        try:
            return await self.corpus.ingest(new)
        except (UnsupportedMediaType, UnreadableDocument, DocumentTooLarge) as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except QueueFull as exc:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None

    @staticmethod
    def _new_document(document: embeddings_pb2.DocumentInput, access: Access) -> NewDocument:
        """The document as the caller's team stores it ('' = the shared corpus)."""
        try:
            tlp = Tlp.from_proto(document.tlp, Tlp.CLEAR)
        except UnknownTlp as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return NewDocument(
            content=document.content,
            media_type=document.media_type,
            filename=document.filename,
            title=document.title,
            uri=document.uri,
            source=document.source,
            collected_at=document.collected_at.ToDatetime(tzinfo=UTC) if document.HasField("collected_at") else None,
            tlp=tlp,
            investigation_id=document.investigation_id,
            team=access.team,
        )

    async def Search(self, request: embeddings_pb2.SearchRequest, ctx: CallContext) -> embeddings_pb2.SearchResponse:
        if not request.query.strip():
            raise RpcError(StatusCode.INVALID_ARGUMENT, "query is empty")
        k = request.k or 10
        if not 1 <= k <= MAX_K:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"k must be between 1 and {MAX_K}, got {k}")
        if request.mode not in _MODES:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"unknown search mode {request.mode}")
        access = _access(request.access)
        f = request.filters
        try:
            filters = SearchFilter(
                sources=list(f.sources),
                collected_after=f.collected_after.ToDatetime(tzinfo=UTC) if f.HasField("collected_after") else None,
                collected_before=f.collected_before.ToDatetime(tzinfo=UTC) if f.HasField("collected_before") else None,
                tlp=[Tlp.from_proto(value, Tlp.CLEAR).value for value in f.tlp],  # stored labels
                investigation_id=f.investigation_id,
            )
        except UnknownTlp as exc:
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            hits = await self.corpus.search(request.query, k, filters, _MODES[request.mode], access=access)
        except QueueFull as exc:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        return embeddings_pb2.SearchResponse(
            model=self.corpus.model.name,
            hits=[
                embeddings_pb2.SearchHit(
                    chunk_id=h.chunk_id, document_id=h.document_id, title=h.title, uri=h.uri, start=h.start,
                    end=h.end, excerpt=h.excerpt, score=h.score, source=h.source, tlp=Tlp(h.tlp).to_proto(),
                    investigation_id=h.investigation_id, collected_at=_timestamp(h.collected_at),
                )
                for h in hits
            ],
        )

    async def GetDocument(self, request: embeddings_pb2.GetDocumentRequest, ctx: CallContext) -> embeddings_pb2.Document:
        doc = await self.corpus.get_document(request.document_id, _access(request.access))
        if doc is None:  # none, or one the caller may not read: the same answer
            raise RpcError(StatusCode.NOT_FOUND, f"no document {request.document_id!r}")
        return embeddings_pb2.Document(
            id=doc.id, title=doc.title, uri=doc.uri, source=doc.source, media_type=doc.media_type,
            tlp=Tlp(doc.tlp).to_proto(),
            investigation_id=doc.investigation_id, collected_at=_timestamp(doc.collected_at),
            ingested_at=_timestamp(doc.ingested_at), content_hash=doc.content_hash, text=doc.text, chunks=doc.chunks,
            team=doc.team,
        )

    async def DeleteDocument(
        self, request: embeddings_pb2.DeleteDocumentRequest, ctx: CallContext
    ) -> embeddings_pb2.DeleteDocumentResponse:
        try:
            chunks = await self.corpus.delete_document(request.document_id, _access(request.access))
        except SharedDocument as exc:
            raise RpcError(StatusCode.PERMISSION_DENIED, str(exc)) from None
        if chunks is None:  # none, or one the caller may not read: the same answer
            raise RpcError(StatusCode.NOT_FOUND, f"no document {request.document_id!r}")
        return embeddings_pb2.DeleteDocumentResponse(deleted=True, chunks=chunks)

    async def Stats(self, request: embeddings_pb2.StatsRequest, ctx: CallContext) -> embeddings_pb2.StatsResponse:
        documents, chunks = await self.corpus.counts()
        return embeddings_pb2.StatsResponse(
            documents=documents,
            chunks=chunks,
            vectors=await self.corpus.index.count(self.corpus.model.name),
            vector_backend=self.corpus.index.name,
            corpus_model=self.corpus.model.name,
            queues=[
                embeddings_pb2.ModelQueueStats(
                    model=m.name, batches=m.batcher.stats.batches, texts=m.batcher.stats.texts,
                    mean_batch_size=m.batcher.stats.mean_batch_size, queued_texts=m.batcher.queued_texts,
                    rejected=m.batcher.stats.rejected,
                )
                for m in self.models
            ],
        )


def _access(access: common_pb2.Access) -> Access:
    """Who asks: an unset Access (an admin's key, another service) reads every team at any label."""
    try:
        return Access(access.team, Tlp.from_proto(access.max_tlp))
    except UnknownTlp as exc:
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"access.max_tlp: {exc}") from None


def _may_store(tlp: Tlp, access: Access, what: str = "the document") -> None:
    """A caller cannot store what it may not read."""
    if access.max_tlp is not None and tlp.rank > access.max_tlp.rank:
        raise RpcError(StatusCode.PERMISSION_DENIED,
                       f"{what} is TLP:{tlp.value.upper()}; this key reads at most TLP:{access.max_tlp.value.upper()}")


async def _embed(embed: Callable[[list[str]], Awaitable[Embedded]], texts: list[str]) -> Embedded:
    try:
        result: Embedded = await embed(texts)
    except QueueFull as exc:
        raise RpcError(StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
    return result


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _job_message(job: IngestJob) -> embeddings_pb2.IngestJob:
    return embeddings_pb2.IngestJob(
        job_id=job.id, status=_JOB_STATUS[job.status], filename=job.filename, media_type=job.media_type,
        bytes=job.bytes, chunks_done=job.chunks_done, chunks_total=job.chunks_total, document_id=job.document_id,
        duplicate=job.duplicate, title=job.title, error=job.error, attempts=job.attempts,
        created_at=_timestamp(job.created_at), updated_at=_timestamp(job.updated_at),
        started_at=_timestamp(job.started_at) if job.started_at else None,
        finished_at=_timestamp(job.finished_at) if job.finished_at else None,
    )


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error: show the driver's
    return " ".join(str(cause).split())[:300] or type(cause).__name__


def _where(dsn: str) -> str:
    """host:port/db of a DSN, without credentials, for error messages."""
    parts = urllib.parse.urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def open_vector_index(config: EmbeddingsConfig, pool: AsyncConnectionPool[Any], data_dir: Path) -> VectorIndex:
    """The configured backend. Qdrant's local mode locks its directory: one instance only; run
    replicas against a Qdrant server (qdrant_url)."""
    match config.vector_backend:
        case "pgvector":
            return PgVectorIndex(pool, config.hnsw_ef_search)
        case "qdrant":
            return QdrantIndex.open(config.qdrant_url, data_dir / "qdrant")
        case _:
            return WeaviateIndex.open(config.weaviate_url, config.weaviate_grpc_port)


@dataclass
class EmbeddingsDeps:
    """What the embeddings service takes from outside: its database, its data directory and, when the
    caller has them loaded already (tests, benches), the models."""

    dsn: str
    data_dir: Path
    models: ModelRegistry | None = None  # None: load the configured models
    nc: NatsClient | None = None  # where ingest job events go (JetStream); None: not published


async def assemble(info: InstanceInfo, config: EmbeddingsConfig, deps: EmbeddingsDeps) -> Embeddings:
    """The service from its config and dependencies: the corpus schema migrated, the pool, models and
    vector index open. The service, its tests and bench_embeddings all start it this way; any failure
    is a StartupError with one line."""
    try:
        await asyncio.to_thread(migrate, deps.dsn)
        pool = await open_pool(deps.dsn)
    except Exception as exc:  # any driver error at start becomes the one line the operator reads
        raise StartupError(f"postgres at {_where(deps.dsn)}: {_one_line(exc)}") from None
    try:
        models = deps.models if deps.models is not None else await asyncio.to_thread(ModelRegistry.load, config)
        index = open_vector_index(config, pool, deps.data_dir)
        corpus = Corpus(pool, index, models.default, chunk_chars=config.chunk_chars,
                        chunk_overlap=config.chunk_overlap, max_document_bytes=config.max_document_bytes,
                        pipeline_depth=config.ingest_pipeline_depth)
        await corpus.prepare()
    except Exception as exc:
        await pool.close()
        raise StartupError(f"embeddings: {_one_line(exc)}") from None
    return Embeddings(info, config, models, corpus, IngestEvents(deps.nc, info.service))


async def build(runtime: ServiceRuntime[Settings]) -> Embeddings:
    """Read the service's secrets (its database's DSN), then assemble it."""
    dsn = (await asyncio.to_thread(runtime.secrets.read, "postgres")).get("dsn", "")
    if not dsn:
        raise StartupError("Vault secret 'postgres' has no dsn; the embeddings service stores its corpus there")
    return await assemble(runtime.info, runtime.settings.embeddings,
                          EmbeddingsDeps(dsn, runtime.settings.data_dir, nc=runtime.nc))
