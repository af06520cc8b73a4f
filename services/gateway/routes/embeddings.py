"""Embeddings and the corpus over HTTP: embed, the OpenAI-compatible /v1/embeddings, document
upload and retrieval, hybrid search with citations."""

from __future__ import annotations

import base64
import struct
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ConfigDict, Field, field_validator

from bev.embeddings.v1 import embeddings_pb2
from bev.media_types import UnsupportedMediaType, resolve_media_type
from services.gateway.deps import READ, WRITE, CallerDep, ClientsDep, LlmBudgetDep
from services.gateway.routes.common import INTEGRAL, TLP_LABELS, Body, enum_value, labels, tlp_value, to_json

# Paths whose bodies may be up to GatewayConfig.max_upload_bytes (the body-size middleware reads it).
UPLOAD_PATHS = frozenset({"/api/v1/documents"})
MAX_OPENAI_INPUTS = 2048

router = APIRouter(tags=["embeddings"])


class EmbedBody(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["phishing kit", "ransomware group"]}]})

    texts: list[str] = Field(min_length=1, max_length=MAX_OPENAI_INPUTS)
    model: str = ""


class OpenAIEmbeddingsBody(Body):
    """OpenAI's embeddings request, strictly typed. Token-id inputs are refused: our models read text."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "all-MiniLM-L6-v2", "input": ["phishing kit"]}]})

    input: str | list[str] = Field(description=f"a text, or 1 to {MAX_OPENAI_INPUTS} texts")
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536), INTEGRAL] | None = Field(
        default=None, description="must be the model's own")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(item, int | list) for item in value):
            raise ValueError("token-id input is not supported; send text")
        return value

    @field_validator("input")
    @classmethod
    def _count(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_OPENAI_INPUTS:
            raise ValueError(f"{len(value)} inputs; send 1 to {MAX_OPENAI_INPUTS}")
        return value


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    try:
        stamp.FromDatetime(value)
    except (OverflowError, ValueError):  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise HTTPException(400, f"{value.isoformat()} is out of range (years 1 to 9999, in UTC)") from None
    return stamp


def _job_json(job: embeddings_pb2.IngestJob) -> dict[str, Any]:
    body = to_json(job)
    body["status"] = embeddings_pb2.IngestJobStatus.Name(job.status).removeprefix("INGEST_JOB_STATUS_").lower()
    body["bytes"] = job.bytes  # an int64: protobuf's JSON would make it a string
    body["url"] = f"/api/v1/documents/jobs/{job.job_id}"
    for unset in ("started_at", "finished_at"):  # null until the job is taken / ends
        body.setdefault(unset, None)
    return body


_JOB_EXAMPLE = {"job_id": "0b6c5a4e-0f1f-4c1e-9d43-6c2b8a1f7e20", "status": "queued", "filename": "report.pdf",
                "media_type": "application/pdf", "bytes": 183422, "chunks_done": 0, "chunks_total": 0,
                "document_id": "", "duplicate": False, "title": "PaleMoth report", "error": "", "attempts": 0,
                "created_at": "2026-12-01T10:00:00Z", "started_at": None, "updated_at": "2026-12-01T10:00:00Z",
                "finished_at": None, "url": "/api/v1/documents/jobs/0b6c5a4e-0f1f-4c1e-9d43-6c2b8a1f7e20"}


@router.post("/api/v1/embeddings/embed", dependencies=[WRITE], responses={404: {"description": "No such model"}})
async def embed(body: EmbedBody, clients: ClientsDep, budget: LlmBudgetDep) -> dict[str, Any]:
    """Vectors for the texts; their tokens count against the key's daily model budget."""
    answer = await clients.embeddings.Embed(embeddings_pb2.EmbedRequest(texts=body.texts, model=body.model))
    await budget.spend(answer.total_tokens)
    return to_json(answer)


@router.post("/v1/embeddings", dependencies=[WRITE], responses={
    200: {"description": "OpenAI's embedding list",
          "content": {"application/json": {"example": {
              "object": "list", "model": "all-MiniLM-L6-v2", "usage": {"prompt_tokens": 4, "total_tokens": 4},
              "data": [{"object": "embedding", "index": 0, "embedding": [0.021, -0.047, 0.113]}]}}}},
    404: {"description": "No such model"}})
async def openai_embeddings(body: OpenAIEmbeddingsBody, clients: ClientsDep, budget: LlmBudgetDep) -> dict[str, Any]:
    """OpenAI's embeddings; the tokens count against the key's daily model budget."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise HTTPException(400, "input is empty")
    strings = [t for t in texts if isinstance(t, str)]
    if len(strings) != len(texts):
        raise HTTPException(400, "token-id input is not supported; send text")
    if len(strings) > MAX_OPENAI_INPUTS:
        raise HTTPException(400, f"{len(strings)} inputs; at most {MAX_OPENAI_INPUTS} per request")
    reply = await clients.embeddings.Embed(embeddings_pb2.EmbedRequest(texts=strings, model=body.model))
    await budget.spend(reply.total_tokens)
    if body.dimensions is not None and body.dimensions != reply.dimensions:
        raise HTTPException(400, f"model {reply.model} returns {reply.dimensions} dimensions; "
                                 f"dimensions={body.dimensions} is not supported")
    data = []
    for index, vector in enumerate(reply.vectors):
        values = list(vector.values)
        embedding: list[float] | str = (  # base64: little-endian float32, as OpenAI sends it
            base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
            if body.encoding_format == "base64" else values
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": reply.model,
        "usage": {"prompt_tokens": reply.total_tokens, "total_tokens": reply.total_tokens},
    }


@router.post("/api/v1/documents", status_code=202, dependencies=[WRITE], responses={
    202: {"description": "Stored and queued: the ingest job, its `Location` header its URL",
          "headers": {"Location": {"description": "/api/v1/documents/jobs/{job_id}", "schema": {"type": "string"}}},
          "content": {"application/json": {"example": _JOB_EXAMPLE}}},
    403: {"description": "A TLP label above the key's"}})
async def upload_document(
    clients: ClientsDep, caller: CallerDep,
    file: Annotated[UploadFile, File(description="the document: text, Markdown, HTML, PDF or a STIX 2.1 bundle")],
    title: Annotated[str, Form(examples=["PaleMoth report"])] = "",
    uri: Annotated[str, Form(examples=["https://intel.example.org/reports/palemoth.pdf"])] = "",
    source: Annotated[str, Form(examples=["vendor-report"])] = "upload",
    tlp: Annotated[str, Form(description="TLP label: clear, green, amber, amber+strict, red (at most the key's)",
                             examples=["amber"])] = "clear",
    investigation_id: Annotated[str, Form()] = "",
    collected_at: Annotated[datetime | None, Form(examples=["2026-12-01T09:30:00Z"])] = None,
) -> JSONResponse:
    """Store the document durably and queue it for ingest, as the key's team's: 202 with the job
    (`job_id`, `status`, `url`; the `Location` header is the same URL). Follow it at
    GET /api/v1/documents/jobs/{job_id}."""
    content = await file.read()  # bounded by GatewayConfig.max_upload_bytes in the middleware (413)
    if not content:
        raise HTTPException(400, "the uploaded file is empty")
    try:
        media_type = resolve_media_type(file.content_type or "", file.filename or "", content)
    except UnsupportedMediaType as exc:
        raise HTTPException(415, str(exc)) from None
    document = embeddings_pb2.DocumentInput(
        content=content, media_type=media_type, filename=file.filename or "", title=title, uri=uri,
        source=source, tlp=tlp_value(tlp), investigation_id=investigation_id,
        collected_at=_timestamp(collected_at),
    )
    job = await clients.embeddings.SubmitIngest(
        embeddings_pb2.SubmitIngestRequest(document=document, access=caller.access()))
    body = _job_json(job)
    return JSONResponse(body, status_code=202, headers={"Location": body["url"]})


@router.get("/api/v1/documents/jobs/{job_id}", dependencies=[READ], responses={
    200: {"description": "The job", "content": {"application/json": {"example": {
        **_JOB_EXAMPLE, "status": "completed", "chunks_done": 12, "chunks_total": 12, "attempts": 1,
        "document_id": "doc-5d1e", "started_at": "2026-12-01T10:00:01Z", "finished_at": "2026-12-01T10:00:09Z"}}}},
    404: {"description": "No such ingest job (or another team's)"}})
async def get_ingest_job(job_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    """An upload's ingest job: status (queued, running, completed, failed), chunks_done of
    chunks_total, document_id once stored, error when failed; 404 for an unknown id."""
    return _job_json(await clients.embeddings.GetIngestJob(
        embeddings_pb2.GetIngestJobRequest(job_id=job_id, access=caller.access())))


@router.get("/api/v1/documents/{document_id}", dependencies=[READ],
            responses={404: {"description": "No such document (or one the key may not read)"}})
async def get_document(document_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    return to_json(await clients.embeddings.GetDocument(
        embeddings_pb2.GetDocumentRequest(document_id=document_id, access=caller.access())))


@router.delete("/api/v1/documents/{document_id}", dependencies=[WRITE],
               responses={404: {"description": "No such document (or one the key may not read)"}})
async def delete_document(document_id: str, clients: ClientsDep, caller: CallerDep) -> dict[str, Any]:
    return to_json(await clients.embeddings.DeleteDocument(
        embeddings_pb2.DeleteDocumentRequest(document_id=document_id, access=caller.access())))


@router.get("/api/v1/search", dependencies=[READ], responses={
    200: {"description": "Hits, best first, each citing its document and offsets",
          "content": {"application/json": {"example": {"hits": [{
              "chunk_id": "doc-5d1e:3", "document_id": "doc-5d1e", "title": "PaleMoth report",
              "uri": "https://intel.example.org/reports/palemoth.pdf", "start": 1204, "end": 1690,
              "excerpt": "PaleMoth operators registered cdn-updates.example.net ...", "score": 1.031,
              "source": "vendor-report", "tlp": "amber", "investigation_id": "",
              "collected_at": "2026-12-01T09:30:00Z"}], "model": "all-MiniLM-L6-v2"}}}}})
async def search(
    clients: ClientsDep, caller: CallerDep,
    q: Annotated[str, Query(min_length=1, pattern=r"\S", description="what to look for (not only spaces)",
                            examples=["living off the land"])],
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    mode: Annotated[str, Query(description="hybrid, vector or text",
                               json_schema_extra=labels("hybrid", "vector", "text"))] = "hybrid",
    source: Annotated[list[str] | None, Query(description="any of these sources")] = None,
    tlp: Annotated[list[Annotated[str, Field(json_schema_extra=TLP_LABELS)]] | None,
                   Query(description="any of these TLP labels")] = None,
    investigation_id: str = "",
    after: Annotated[datetime | None, Query(description="collected at or after (ISO 8601)")] = None,
    before: Annotated[datetime | None, Query(description="collected before (ISO 8601)")] = None,
) -> dict[str, Any]:
    """Hybrid (vector and full-text) search over the documents the key may read: its team's, at
    most its TLP."""
    request = embeddings_pb2.SearchRequest(
        query=q, k=k, mode=enum_value(embeddings_pb2.SearchMode, "SEARCH_MODE_", mode, "search mode"),
        filters=embeddings_pb2.SearchFilters(
            sources=source or [], tlp=[tlp_value(label) for label in tlp or []], investigation_id=investigation_id,
            collected_after=_timestamp(after), collected_before=_timestamp(before),
        ),
        access=caller.access(),
    )
    return to_json(await clients.embeddings.Search(request))


@router.get("/api/v1/corpus/stats", dependencies=[READ])
async def stats(clients: ClientsDep) -> dict[str, Any]:
    return to_json(await clients.embeddings.Stats(embeddings_pb2.StatsRequest()))
