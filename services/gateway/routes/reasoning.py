"""The reasoning service over HTTP: generation, evidence analysis (claims, hypotheses, synthesis)
and the inference router's state. The model routes spend the caller's daily LLM token budget."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from bev.reasoning.v1 import reasoning_pb2
from services.gateway.deps import READ, WRITE, ClientsDep, LlmBudgetDep
from services.gateway.routes.common import (
    MAX_TOKENS,
    TIER_LABELS,
    Body,
    Int,
    Limit,
    PageCursor,
    paged,
    tier_value,
    to_json,
)

router = APIRouter(tags=["reasoning"])


def _tier_field() -> Any:
    return Field(default="", json_schema_extra=TIER_LABELS,
                 description="fast, balanced or powerful (any case); empty: the service's default tier")


class GenerateBody(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "What is OSINT?", "max_tokens": 48, "temperature": 0.0, "tier": "fast"}]})

    prompt: str = Field(min_length=1)
    max_tokens: Int = Field(default=64, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] = Field(default=[], max_length=16)
    tier: str = _tier_field()
    session_id: str = Field(default="", description="keeps one investigation's requests on one backend")


class DocumentBody(Body):
    id: str = ""
    text: str = Field(min_length=1)
    source: str = ""


class AnalyzeBody(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "question": "Who is behind the fake browser-update campaign?",
        "documents": [{"id": "rss-1", "source": "https://feeds.example.net/palemoth.xml",
                       "text": "PaleMoth operators registered cdn-updates.example.net on 2026-03-02 and "
                               "served the fake update from 203.0.113.9."}],
        "tier": "fast", "max_hypotheses": 3}]})

    question: str = Field(min_length=1)
    documents: list[DocumentBody] = Field(min_length=1)
    tier: str = _tier_field()
    session_id: str = ""
    max_hypotheses: Int = Field(default=0, ge=0, le=8, description="0: the service's default")


def _tokens(usage: reasoning_pb2.Usage) -> int:
    return usage.prompt_tokens + usage.completion_tokens


@router.post("/api/v1/reasoning/generate", dependencies=[WRITE], responses={
    200: {"description": "The text, with the tokens it used (counted against the key's daily budget)",
          "content": {"application/json": {"example": {
              "text": "Open-source intelligence: collecting and analysing publicly available information.",
              "model": "smollm2-135m-instruct", "finish_reason": "stop", "backend": "llama.cpp",
              "usage": {"prompt_tokens": 31, "completion_tokens": 14}}}}}})
async def generate(body: GenerateBody, clients: ClientsDep, budget: LlmBudgetDep) -> dict[str, Any]:
    request = reasoning_pb2.GenerateRequest(
        prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature, stop=body.stop,
        tier=tier_value(body.tier), session_id=body.session_id,
    )
    answer = await clients.reasoning.Generate(request)
    await budget.spend(_tokens(answer.usage))
    return to_json(answer)


@router.post("/api/v1/reasoning/analyze", dependencies=[WRITE])
async def analyze(body: AnalyzeBody, clients: ClientsDep, budget: LlmBudgetDep) -> dict[str, Any]:
    """Claims quoted from the documents with their offsets, hypotheses citing them, counterfactuals
    and a synthesis; every phase's model tokens count against the key's daily budget."""
    request = reasoning_pb2.AnalyzeRequest(
        question=body.question, tier=tier_value(body.tier), session_id=body.session_id,
        max_hypotheses=body.max_hypotheses,
        documents=[reasoning_pb2.Document(id=d.id, text=d.text, source=d.source) for d in body.documents],
    )
    answer = await clients.reasoning.Analyze(request, timeout_s=600)
    await budget.spend(sum(_tokens(phase.usage) for phase in answer.phases))
    return to_json(answer)


@router.get("/api/v1/reasoning/router", dependencies=[READ])
async def router_status(clients: ClientsDep, limit: Limit = 100, cursor: PageCursor = "") -> dict[str, Any]:
    """The inference backends (by name): health, load, requests, failures; the router's counters on every page."""
    status = await clients.reasoning.RouterStatus(reasoning_pb2.RouterStatusRequest())
    page, next_cursor = paged(status.backends, lambda b: b.name, limit, cursor)
    body = to_json(status)
    body["backends"] = [to_json(backend) for backend in page]
    body["next_cursor"] = next_cursor
    return body
