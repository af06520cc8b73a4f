"""OpenAI-compatible chat API: POST /v1/chat/completions (stream=true: SSE chunks in OpenAI's format)
and GET /v1/models, served by Reasoning.Chat/ChatStream/ListModels over NATS.

`model` is a tier name (fast, balanced, powerful) or a model that GET /v1/models lists. Requests of
one investigation stay on one backend when they carry `session_id` (extra body field) or `user`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter
from pydantic import ConfigDict, Field, field_validator

from bev.reasoning.v1 import reasoning_pb2
from bev.rpc import RpcError, StatusCode
from bev.telemetry import get_logger
from bev.vocab import Tier, UnknownTier
from services.gateway.deps import READ, WRITE, ClientsDep, LlmBudgetDep
from services.gateway.routes.common import INTEGRAL, MAX_TOKENS, Body

log = get_logger(__name__)

router = APIRouter(tags=["openai"])

STREAM_ERRORS = Counter(
    "bev_gateway_stream_errors_total",
    "Chat completion streams that ended with an unexpected error (not an RPC status), by exception type",
    ["error"],
)


CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The completion; with `stream: true`, server-sent events of chat.completion.chunk "
                         "objects ending with `data: [DONE]`",
          "content": {"application/json": {"example": {
              "id": "chatcmpl-6f1c0e", "object": "chat.completion", "created": 1767225600,
              "model": "smollm2-135m-instruct", "system_fingerprint": "llama.cpp-0",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Open-source intelligence."},
                           "logprobs": None, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 24, "completion_tokens": 5, "total_tokens": 29}}},
                      "text/event-stream": {"example": 'data: {"id": "chatcmpl-6f1c0e", "object": '
                                                       '"chat.completion.chunk", "choices": [{"index": 0, "delta": '
                                                       '{"content": "Open"}, "finish_reason": null}]}\n\n'
                                                       'data: [DONE]\n\n'}}},
    404: {"description": "No such model (GET /v1/models lists them)"},
}


class Part(Body):
    """A content part; only text is read here (images and audio are refused)."""

    type: Literal["text"]
    text: str


class Message(Body):
    role: Literal["system", "developer", "user", "assistant"]
    # Required, as OpenAI requires it of every message that carries no tool calls (tools are refused).
    content: str | Annotated[list[Part], Field(min_length=1)] = Field(description="the text, or text parts")
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


# What a response_format schema may ask of the decoder. Engines turn the schema into a grammar, and
# some schemas break that: an empty enum or anyOf gives an empty grammar, `not` has none,
# {"maxLength": 1000000000} expands for ever. Like OpenAI's Structured Outputs, the API takes a
# bounded subset. The last three rules are llama.cpp's (llama-cpp-python 0.3.36): its converter
# writes a grammar its server cannot parse for a `"` in an enum value or a property name and for
# escapes such as \d, \w, \s, \b or \. in a pattern, and the whole server dies of it (the fast
# tier with it). They belong with the llama.cpp backend in the reasoning service once it checks
# grammars itself; services/gateway/tests/test_bad_input.py lists each refusal.
SCHEMA_MAX_DEPTH = 10
SCHEMA_MAX_NODES = 5000
SCHEMA_MAX_ENUM = 1000
SCHEMA_MAX_COUNT = 1000  # minLength, maxItems, ... and {m,n} in a pattern
_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_ONES = ("items", "additionalProperties", "contains", "propertyNames", "unevaluatedProperties",
                "unevaluatedItems", "if", "then", "else")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
           "maxContains")
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_PATTERN_ESCAPES = frozenset("\\tnr")


def _pattern_problem(pattern: Any, where: str) -> str | None:
    if not isinstance(pattern, str) or len(pattern) > 1000:
        return f"{where}: pattern must be a regular expression of at most 1000 characters"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"{where}: pattern is not a regular expression ({exc})"
    if any(int(n or 0) > SCHEMA_MAX_COUNT for match in _REPEAT.finditer(pattern) for n in match.groups()):
        return f"{where}: a repetition in pattern counts past {SCHEMA_MAX_COUNT}"
    escapes = re.findall(r"\\(.)", pattern, re.DOTALL)
    if any(escape not in _PATTERN_ESCAPES for escape in escapes):
        return (f"{where}: pattern may escape only \\\\, \\t, \\n and \\r (write [0-9] for \\d, [.] for \\.)")
    return None


def _node_problem(node: dict[str, Any], where: str) -> str | None:
    """Why one schema object is refused (its subschemas aside), or None."""
    if "not" in node:
        return f"{where}: `not` is not supported"
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        return f"{where}: $ref must point inside the schema (#/...)"
    kinds = node.get("type")
    listed = kinds if isinstance(kinds, list) else [kinds]
    if kinds is not None and not (listed and all(isinstance(k, str) and k in _JSON_TYPES for k in listed)):
        return f"{where}: type must be one of {', '.join(sorted(_JSON_TYPES))}, or a non-empty list of them"
    enum = node.get("enum")
    if enum is not None and not (isinstance(enum, list) and 1 <= len(enum) <= SCHEMA_MAX_ENUM):
        return f"{where}: enum must list 1 to {SCHEMA_MAX_ENUM} values"
    for key in _SCHEMA_LISTS:
        if key in node and not (isinstance(node[key], list) and node[key]):
            return f"{where}: {key} must be a non-empty list of schemas"
    for key in _COUNTS:
        value = node.get(key)
        if value is not None and not (type(value) is int and 0 <= value <= SCHEMA_MAX_COUNT):
            return f"{where}: {key} must be an integer from 0 to {SCHEMA_MAX_COUNT}"
    properties = node.get("properties")
    required = node.get("required")
    names = [*(properties if isinstance(properties, dict) else ()), *(required if isinstance(required, list) else ())]
    values = [*(enum or []), node.get("const")]
    if any(isinstance(text, str) and '"' in text for text in names + values):
        return f'{where}: a property name or an enum or const value with a double quote (") is not supported'
    if "pattern" in node:
        return _pattern_problem(node["pattern"], where)
    return None


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why a response_format JSON schema is refused, or None."""
    pending: list[tuple[Any, str, int]] = [(schema, "schema", 0)]
    nodes = 0
    while pending:
        node, where, depth = pending.pop()
        if isinstance(node, bool):  # true / false are schemas too
            continue
        if not isinstance(node, dict):
            return f"{where}: a schema is an object (or true / false)"
        nodes += 1
        if depth > SCHEMA_MAX_DEPTH or nodes > SCHEMA_MAX_NODES:
            return f"the schema nests deeper than {SCHEMA_MAX_DEPTH} levels or has over {SCHEMA_MAX_NODES} parts"
        if problem := _node_problem(node, where):
            return problem
        for key in _SCHEMA_ONES:
            if key in node:
                pending.append((node[key], f"{where}.{key}", depth + 1))
        for key in _SCHEMA_LISTS:
            pending.extend((item, f"{where}.{key}[{i}]", depth + 1) for i, item in enumerate(node.get(key) or []))
        for key in _SCHEMA_MAPS:
            children = node.get(key)
            if children is not None and not isinstance(children, dict):
                return f"{where}.{key}: must be an object of schemas"
            pending.extend((child, f"{where}.{key}.{name}", depth + 1) for name, child in (children or {}).items())
    return None


class JsonSchemaFormat(Body):
    name: str = Field(default="output", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(
        alias="schema", description=f"a JSON Schema: nested at most {SCHEMA_MAX_DEPTH} levels, every enum and "
                                    f"anyOf/oneOf/allOf non-empty, counts at most {SCHEMA_MAX_COUNT}, no `not`, "
                                    "$ref only inside the schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _decodable(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if problem := schema_problem(schema):
            raise ValueError(problem)
        return schema


class TextFormat(Body):
    type: Literal["text"]


class JsonObjectFormat(Body):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]


class StreamOptions(Body):
    include_usage: bool = False


class ChatCompletionBody(Body):
    """OpenAI's chat completion request, validated as OpenAI validates it: JSON types exact (no
    `"stream": 0`, no `"temperature": false`), every number in its range, every message with a role
    and content. `null` stands for the default, as OpenAI takes it. Other fields are ignored."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "fast", "messages": [{"role": "system", "content": "You are a concise analyst."},
                                       {"role": "user", "content": "What is OSINT?"}], "max_tokens": 48},
        {"model": "fast", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": "Is evil-payload.xyz malicious?"}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": {
             "type": "object", "properties": {"verdict": {"enum": ["malicious", "benign"]}},
             "required": ["verdict"]}}}}]})

    model: str = Field(default="", description="a tier (fast, balanced, powerful) or a model GET /v1/models lists; "
                                               "empty: the default tier")
    messages: list[Message] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS), INTEGRAL] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS), INTEGRAL] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="default 1")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(default=None, description="up to 4 sequences")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] | None = Field(default=1, description="one choice per request")
    user: str | None = None
    session_id: str | None = Field(default=None, description="keeps an investigation's requests on one backend")
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="not supported: omit or empty")

    @field_validator("tools", mode="before")
    @classmethod
    def _no_tools(cls, tools: Any) -> Any:
        if isinstance(tools, list) and tools:
            raise ValueError("tools are not supported by this endpoint")
        return tools


def _request(body: ChatCompletionBody) -> reasoning_pb2.ChatRequest:
    schema = ""
    if isinstance(body.response_format, JsonSchemaResponseFormat):
        schema = json.dumps(body.response_format.json_schema.schema_)
    elif isinstance(body.response_format, JsonObjectFormat):
        schema = json.dumps({"type": "object"})
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    return reasoning_pb2.ChatRequest(
        messages=[reasoning_pb2.ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
                  for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens or 0,
        temperature=1.0 if body.temperature is None else body.temperature, top_p=body.top_p or 0.0, stop=stops,
        session_id=body.session_id or body.user or "", json_schema=schema, model=body.model,
    )


def _usage(usage: reasoning_pb2.Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _sse(payload: dict[str, Any] | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


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


@router.get("/v1/models", dependencies=[READ], responses={
    200: {"description": "OpenAI's model list: the tiers served, then each served model",
          "content": {"application/json": {"example": {"object": "list", "data": [
              {"id": "fast", "object": "model", "created": 0, "owned_by": "bev"},
              {"id": "smollm2-135m-instruct", "object": "model", "created": 0, "owned_by": "bev"}]}}}}})
async def models(clients: ClientsDep) -> dict[str, Any]:
    """OpenAI's shape, unpaged as OpenAI's is (a handful of tiers and models)."""
    listed = await clients.reasoning.ListModels(reasoning_pb2.ListModelsRequest())
    served = {_tier(m.tier) for m in listed.models}
    names = [t.value for t in Tier.ordered() if t in served] + [m.name for m in listed.models]
    return {"object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "bev"}
                     for name in dict.fromkeys(names)]}


@router.post("/v1/chat/completions", response_model=None, responses=CHAT_RESPONSES, dependencies=[WRITE])
async def chat_completions(body: ChatCompletionBody, clients: ClientsDep,
                           budget: LlmBudgetDep) -> dict[str, Any] | Response:
    """OpenAI's chat completions; errors (RPC statuses included) in OpenAI's shape (services/gateway/api.py).
    The tokens used count against the key's daily budget (a stream's once it ends)."""
    request = _request(body)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.stream:
        answer = await clients.reasoning.Chat(request)
        usage = _usage(answer.usage)
        await budget.spend(usage["total_tokens"])
        return {
            "id": completion_id, "object": "chat.completion", "created": created,
            "model": answer.model, "system_fingerprint": answer.backend,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "logprobs": None, "finish_reason": answer.finish_reason}],
            "usage": usage,
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
        # The service reports usage on the last chunk only; a stream cut short (the client left, the
        # backend failed) is charged a token per chunk received, the least it cost.
        chunks, used = 0, 0
        yield frame({"role": "assistant", "content": ""}, None)
        item: reasoning_pb2.ChatChunk | RpcError | None = first
        try:
            while isinstance(item, reasoning_pb2.ChatChunk):
                chunks += 1
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
                    chunks += 1
                    text += item.text
                if item.done:
                    used = _usage(item.usage)["total_tokens"]
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
            with anyio.CancelScope(shield=True):  # the stream's task may be cancelled: still charge
                await budget.spend(used or chunks)
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
