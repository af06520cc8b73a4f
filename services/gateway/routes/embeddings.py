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
from pydantic import Field, field_validator

from bev.embeddings.v1 import embeddings_pb2
from bev.media_types import UnsupportedMediaType, resolve_media_type
from services.gateway.clients import Clients
from services.gateway.routes.common import INTEGRAL, TLP_LABELS, Body, enum_value, labels, tlp_value, to_json

# Paths whose bodies may be up to GatewayConfig.max_upload_bytes (the body-size middleware reads it).
UPLOAD_PATHS = frozenset({"/api/v1/documents"})
MAX_OPENAI_INPUTS = 2048


class EmbedBody(Body):
    texts: list[str] = Field(min_length=1, max_length=MAX_OPENAI_INPUTS)
    model: str = ""


class OpenAIEmbeddingsBody(Body):
    """OpenAI's embeddings request, strictly typed. Token-id inputs are refused: our models read text."""

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


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["embeddings"])

    @api.post("/api/v1/embeddings/embed", responses={404: {"description": "No such model"}})
    async def embed(body: EmbedBody) -> dict[str, Any]:
        return to_json(await clients.embeddings.Embed(embeddings_pb2.EmbedRequest(texts=body.texts, model=body.model)))

    @api.post("/v1/embeddings", responses={404: {"description": "No such model"}})
    async def openai_embeddings(body: OpenAIEmbeddingsBody) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise HTTPException(400, "input is empty")
        strings = [t for t in texts if isinstance(t, str)]
        if len(strings) != len(texts):
            raise HTTPException(400, "token-id input is not supported; send text")
        if len(strings) > MAX_OPENAI_INPUTS:
            raise HTTPException(400, f"{len(strings)} inputs; at most {MAX_OPENAI_INPUTS} per request")
        reply = await clients.embeddings.Embed(embeddings_pb2.EmbedRequest(texts=strings, model=body.model))
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

    def job_json(job: embeddings_pb2.IngestJob) -> dict[str, Any]:
        body = to_json(job)
        body["status"] = embeddings_pb2.IngestJobStatus.Name(job.status).removeprefix("INGEST_JOB_STATUS_").lower()
        body["bytes"] = job.bytes  # an int64: protobuf's JSON would make it a string
        body["url"] = f"/api/v1/documents/jobs/{job.job_id}"
        for unset in ("started_at", "finished_at"):  # null until the job is taken / ends
            body.setdefault(unset, None)
        return body

    @api.post("/api/v1/documents", status_code=202)
    async def upload_document(
        file: Annotated[UploadFile, File(description="the document: text, Markdown, HTML, PDF or a STIX 2.1 bundle")],
        title: Annotated[str, Form()] = "",
        uri: Annotated[str, Form()] = "",
        source: Annotated[str, Form()] = "upload",
        tlp: Annotated[str, Form(description="TLP label: clear, green, amber, amber+strict, red")] = "clear",
        investigation_id: Annotated[str, Form()] = "",
        collected_at: Annotated[datetime | None, Form()] = None,
    ) -> JSONResponse:
        """Store the document durably and queue it for ingest: 202 with the job (`job_id`, `status`,
        `url`; the `Location` header is the same URL). Follow it at GET /api/v1/documents/jobs/{job_id}."""
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
        job = await clients.embeddings.SubmitIngest(embeddings_pb2.SubmitIngestRequest(document=document))
        body = job_json(job)
        return JSONResponse(body, status_code=202, headers={"Location": body["url"]})

    @api.get("/api/v1/documents/jobs/{job_id}", responses={404: {"description": "No such ingest job"}})
    async def get_ingest_job(job_id: str) -> dict[str, Any]:
        """An upload's ingest job: status (queued, running, completed, failed), chunks_done of
        chunks_total, document_id once stored, error when failed; 404 for an unknown id."""
        return job_json(await clients.embeddings.GetIngestJob(embeddings_pb2.GetIngestJobRequest(job_id=job_id)))

    @api.get("/api/v1/documents/{document_id}", responses={404: {"description": "No such document"}})
    async def get_document(document_id: str) -> dict[str, Any]:
        return to_json(await clients.embeddings.GetDocument(embeddings_pb2.GetDocumentRequest(document_id=document_id)))

    @api.delete("/api/v1/documents/{document_id}", responses={404: {"description": "No such document"}})
    async def delete_document(document_id: str) -> dict[str, Any]:
        request = embeddings_pb2.DeleteDocumentRequest(document_id=document_id)
        return to_json(await clients.embeddings.DeleteDocument(request))

    @api.get("/api/v1/search")
    async def search(
        q: Annotated[str, Query(min_length=1, pattern=r"\S", description="what to look for (not only spaces)")],
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
        request = embeddings_pb2.SearchRequest(
            query=q, k=k, mode=enum_value(embeddings_pb2.SearchMode, "SEARCH_MODE_", mode, "search mode"),
            filters=embeddings_pb2.SearchFilters(
                sources=source or [], tlp=[tlp_value(label) for label in tlp or []], investigation_id=investigation_id,
                collected_after=_timestamp(after), collected_before=_timestamp(before),
            ),
        )
        return to_json(await clients.embeddings.Search(request))

    @api.get("/api/v1/corpus/stats")
    async def stats() -> dict[str, Any]:
        return to_json(await clients.embeddings.Stats(embeddings_pb2.StatsRequest()))

    return api
