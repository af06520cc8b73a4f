"""OpenAI-compatible chat API: POST /v1/chat/completions (stream=true: SSE chunks in OpenAI's format)
and GET /v1/models, served by Reasoning.Chat/ChatStream/ListModels over NATS.

`model` is a tier name (fast, balanced, powerful) or a model that GET /v1/models lists. Requests of
one investigation stay on one backend when they carry `session_id` (extra body field) or `user`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter
from pydantic import BaseModel, Field

from bev.reasoning.v1 import reasoning_pb2
from bev.rpc import RpcError, StatusCode
from bev.telemetry import get_logger
from bev.vocab import Tier, UnknownTier
from services.gateway.clients import Clients
from services.gateway.routes.common import HTTP_STATUS

log = get_logger(__name__)

STREAM_ERRORS = Counter(
    "bev_gateway_stream_errors_total",
    "Chat completion streams that ended with an unexpected error (not an RPC status), by exception type",
    ["error"],
)


class Part(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchemaFormat(BaseModel):
    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    model: str = ""
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    user: str = ""
    session_id: str = ""
    tools: list[dict[str, Any]] | None = None


def _request(body: ChatCompletionBody) -> reasoning_pb2.ChatRequest:
    if body.tools:
        raise RpcError(StatusCode.INVALID_ARGUMENT, "tools are not supported by this endpoint")
    schema = ""
    if body.response_format is not None and body.response_format.type == "json_schema":
        if body.response_format.json_schema is None:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "response_format json_schema needs a json_schema object")
        schema = json.dumps(body.response_format.json_schema.schema_)
    elif body.response_format is not None and body.response_format.type == "json_object":
        schema = json.dumps({"type": "object"})
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    return reasoning_pb2.ChatRequest(
        messages=[reasoning_pb2.ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
                  for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens or 0,
        temperature=body.temperature, top_p=body.top_p or 0.0, stop=stops,
        session_id=body.session_id or body.user, json_schema=schema, model=body.model,
    )


def _usage(usage: reasoning_pb2.Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _sse(payload: dict[str, Any] | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def _error(exc: RpcError) -> JSONResponse:
    """OpenAI's error shape, which its clients read the message from."""
    return JSONResponse({"error": {"message": exc.message, "type": exc.code.name.lower(), "param": None,
                                   "code": exc.code.name.lower()}}, status_code=HTTP_STATUS.get(exc.code, 502))


async def _pump(chunks: AsyncIterator[reasoning_pb2.ChatChunk],
                queue: asyncio.Queue[reasoning_pb2.ChatChunk | RpcError | None]) -> None:
    """Move a Reasoning.ChatStream into `queue`; an error ends it as an RpcError item, the end as None.
    The queue is unbounded, but a stream is at most max_tokens chunks."""
    try:
        async for chunk in chunks:
            queue.put_nowait(chunk)
    except RpcError as exc:
        queue.put_nowait(exc)
    except Exception as exc:  # a bug or a transport fault: logged and counted here, reported to the client
        STREAM_ERRORS.labels(error=type(exc).__name__).inc()
        log.exception("chat completion stream failed", error=repr(exc))
        queue.put_nowait(RpcError(StatusCode.INTERNAL, f"the answer stream failed: {exc}"))
    finally:
        queue.put_nowait(None)


def _tier(value: int) -> Tier | None:
    """A listed model's tier; None when unset or newer than this gateway (the model is listed by name)."""
    try:
        return Tier.from_proto(value)
    except UnknownTier:
        return None


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["openai"])

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        listed = await clients.reasoning.ListModels(reasoning_pb2.ListModelsRequest())
        served = {_tier(m.tier) for m in listed.models}
        names = [t.value for t in Tier.ordered() if t in served] + [m.name for m in listed.models]
        return {"object": "list",
                "data": [{"id": name, "object": "model", "created": 0, "owned_by": "bev"}
                         for name in dict.fromkeys(names)]}

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionBody) -> dict[str, Any] | Response:
        try:
            return await _chat_completions(body)
        except RpcError as exc:
            return _error(exc)

    async def _chat_completions(body: ChatCompletionBody) -> dict[str, Any] | Response:
        request = _request(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            answer = await clients.reasoning.Chat(request)
            return {
                "id": completion_id, "object": "chat.completion", "created": created,
                "model": answer.model, "system_fingerprint": answer.backend,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "logprobs": None, "finish_reason": answer.finish_reason}],
                "usage": _usage(answer.usage),
            }
        # One task owns the RPC stream from its first chunk to its close (its trace span lives in
        # that task's context); the response reads what it produced. The first chunk is awaited here
        # so that routing errors become an HTTP status rather than a broken stream.
        queue: asyncio.Queue[reasoning_pb2.ChatChunk | RpcError | None] = asyncio.Queue()
        pump = asyncio.create_task(_pump(clients.reasoning.ChatStream(request), queue))
        first = await queue.get()
        if not isinstance(first, reasoning_pb2.ChatChunk):
            pump.cancel()
            raise first or RpcError(StatusCode.INTERNAL, "the answer stream ended before its first chunk")
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        def frame(delta: dict[str, str], finish: str | None) -> bytes:
            return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                         "model": first.model, "system_fingerprint": first.backend,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        async def events() -> AsyncIterator[bytes]:
            yield frame({"role": "assistant", "content": ""}, None)
            item: reasoning_pb2.ChatChunk | RpcError | None = first
            try:
                while isinstance(item, reasoning_pb2.ChatChunk):
                    text = item.text
                    ended: list[RpcError | None] = []  # an error or the end, read while merging
                    # Behind the model (a slow client, a busy machine)? Send what has piled up as one
                    # delta rather than one write per token.
                    while not item.done and not queue.empty():
                        following = queue.get_nowait()
                        if not isinstance(following, reasoning_pb2.ChatChunk):
                            ended.append(following)
                            break
                        item = following
                        text += item.text
                    if text:
                        yield frame({"content": text}, None)
                    if item.done:
                        yield frame({}, item.finish_reason or "stop")
                        if include_usage:
                            yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                        "model": first.model, "choices": [], "usage": _usage(item.usage)})
                        break
                    item = ended[0] if ended else await queue.get()
                if isinstance(item, RpcError):  # after the first token the status is sent: report in-band
                    yield _sse({"error": {"message": item.message, "type": item.code.name.lower(), "code": None}})
            finally:
                pump.cancel()  # a client that left stops the stream
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    return api
