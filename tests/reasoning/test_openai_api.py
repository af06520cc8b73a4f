"""The official `openai` client, unchanged, against the gateway: /v1/models and /v1/chat/completions,
streamed and not, JSON-schema output, and errors, all the way to llama.cpp and back."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from bev.common.v1 import common_pb2
from bev.reasoning.v1 import reasoning_pb2
from tests.reasoning.conftest import Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGES = [{"role": "system", "content": "You are a concise analyst."},
            {"role": "user", "content": "What is a phishing kit?"}]


def client_for(stack: Stack, api_key: str | None = None) -> openai.AsyncOpenAI:
    """The openai client as an analyst configures it: the gateway's /v1 and a BEV key (the admin's by default)."""
    return openai.AsyncOpenAI(base_url=f"{stack.gateway.url}/v1", api_key=api_key or stack.gateway.admin_key,
                              max_retries=0, http_client=httpx.AsyncClient(trust_env=False, timeout=120))


async def test_models_lists_tiers_and_models(reasoning_stack: Stack) -> None:
    async with client_for(reasoning_stack) as client:
        ids = [model.id async for model in client.models.list()]
    assert ids == ["fast", "smollm2-135m-instruct"]


async def test_chat_completion_plain_and_streamed_agree(reasoning_stack: Stack) -> None:
    async with client_for(reasoning_stack) as client:
        plain = await client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=24,  # type: ignore[arg-type]
                                                     temperature=0)
        stream = await client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=24,  # type: ignore[arg-type]
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    answer = plain.choices[0]
    assert answer.message.role == "assistant" and answer.message.content
    assert answer.finish_reason in ("stop", "length")
    assert plain.usage is not None and plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0
    assert plain.model == "smollm2-135m-instruct" and plain.object == "chat.completion"

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.message.content  # greedy decoding: the same answer, in pieces
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        answer.finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


async def test_json_schema_response_format(reasoning_stack: Stack) -> None:
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["malicious", "benign"]},
                                               "reason": {"type": "string", "maxLength": 80}},
              "required": ["verdict", "reason"], "additionalProperties": False}
    async with client_for(reasoning_stack) as client:
        answer = await client.chat.completions.create(
            model="fast", max_tokens=96, temperature=0,
            messages=[{"role": "user", "content": "Is a domain named evil-payload.xyz malicious?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
        )
    parsed = json.loads(answer.choices[0].message.content or "")
    assert set(parsed) == {"verdict", "reason"} and parsed["verdict"] in ("malicious", "benign")


async def test_bad_requests_get_clear_4xx(reasoning_stack: Stack) -> None:
    async with client_for(reasoning_stack) as client:
        with pytest.raises(openai.NotFoundError, match="gpt-4o"):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
        # Invalid requests are 400 in OpenAI's shape, naming the parameter, as OpenAI answers them.
        with pytest.raises(openai.BadRequestError, match="messages") as empty:
            await client.chat.completions.create(model="fast", messages=[], max_tokens=4)
        assert empty.value.param == "messages" and empty.value.type == "invalid_request_error"
        with pytest.raises(openai.BadRequestError, match="'n'"):
            await client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=4, n=2)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="tools"):
            await client.chat.completions.create(
                model="fast", messages=MESSAGES, max_tokens=4,  # type: ignore[arg-type]
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
        with pytest.raises(openai.BadRequestError, match="refused"):  # longer than the model's context
            await client.chat.completions.create(
                model="fast", max_tokens=4, messages=[{"role": "user", "content": "word " * 6000}])


async def test_the_client_needs_a_valid_key_with_the_route_scope(reasoning_stack: Stack) -> None:
    async with client_for(reasoning_stack, "bev_nosuchkey_" + "A" * 43) as client:
        with pytest.raises(openai.AuthenticationError) as unknown:
            [model.id async for model in client.models.list()]
    assert unknown.value.status_code == 401 and unknown.value.type == "authentication_error"
    reader = await reasoning_stack.gateway.new_key(["read"], "team-openai")
    async with client_for(reasoning_stack, reader) as client:
        assert [model.id async for model in client.models.list()] == ["fast", "smollm2-135m-instruct"]
        # Completions need the write scope (the route's x-bev-scope): refused before the model runs.
        with pytest.raises(openai.PermissionDeniedError, match="write") as denied:
            await client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
    assert denied.value.type == "permission_error"


async def test_router_status_and_list_models_over_nats(reasoning_stack: Stack) -> None:
    status = await reasoning_stack.client.RouterStatus(reasoning_pb2.RouterStatusRequest())
    assert [b.name for b in status.backends] == ["llama.cpp-0", "llama.cpp-1"]
    assert all(b.healthy and b.kind == "llamacpp" and b.context_length == 4096 for b in status.backends)
    assert sum(b.requests for b in status.backends) > 0
    models = await reasoning_stack.client.ListModels(reasoning_pb2.ListModelsRequest())
    assert {(m.name, m.tier, m.healthy) for m in models.models} == {
        ("smollm2-135m-instruct", common_pb2.TIER_FAST, True)}
    assert status.default_tier == common_pb2.TIER_FAST
    async with httpx.AsyncClient(base_url=reasoning_stack.gateway.url, headers=reasoning_stack.gateway.auth(),
                                 trust_env=False) as http:
        shown = (await http.get("/api/v1/reasoning/router")).json()
    assert {b["name"] for b in shown["backends"]} == {"llama.cpp-0", "llama.cpp-1"}
    # The HTTP API speaks tier labels both ways: "fast" in responses, names (any case) in requests.
    assert shown["default_tier"] == "fast" and {b["tier"] for b in shown["backends"]} == {"fast"}
    async with httpx.AsyncClient(base_url=reasoning_stack.gateway.url, headers=reasoning_stack.gateway.auth(),
                                 trust_env=False, timeout=120) as http:
        generated = await http.post("/api/v1/reasoning/generate", json={"prompt": "Say hi.", "max_tokens": 4,
                                                                       "tier": "Fast"})
        assert generated.status_code == 200, generated.text
        bad = await http.post("/api/v1/reasoning/generate", json={"prompt": "Say hi.", "tier": "turbo"})
    assert bad.status_code == 400 and "fast, balanced, powerful" in bad.json()["error"]
