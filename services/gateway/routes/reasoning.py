from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from bev.reasoning.v1 import reasoning_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import MAX_TOKENS, TIER_LABELS, Body, Int, tier_value, to_json


def _tier_field() -> Any:
    return Field(default="", json_schema_extra=TIER_LABELS,
                 description="fast, balanced or powerful (any case); empty: the service's default tier")


class GenerateBody(Body):
    prompt: str = Field(min_length=1)
    max_tokens: Int = Field(default=64, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] = Field(default=[], max_length=16)
    tier: str = _tier_field()
    session_id: str = ""


class DocumentBody(Body):
    id: str = ""
    text: str = Field(min_length=1)
    source: str = ""


class AnalyzeBody(Body):
    question: str = Field(min_length=1)
    documents: list[DocumentBody] = Field(min_length=1)
    tier: str = _tier_field()
    session_id: str = ""
    max_hypotheses: Int = Field(default=0, ge=0, le=8, description="0: the service's default")


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["reasoning"])

    @api.post("/api/v1/reasoning/generate")
    async def generate(body: GenerateBody) -> dict[str, Any]:
        request = reasoning_pb2.GenerateRequest(
            prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature, stop=body.stop,
            tier=tier_value(body.tier), session_id=body.session_id,
        )
        return to_json(await clients.reasoning.Generate(request))

    @api.post("/api/v1/reasoning/analyze")
    async def analyze(body: AnalyzeBody) -> dict[str, Any]:
        request = reasoning_pb2.AnalyzeRequest(
            question=body.question, tier=tier_value(body.tier), session_id=body.session_id,
            max_hypotheses=body.max_hypotheses,
            documents=[reasoning_pb2.Document(id=d.id, text=d.text, source=d.source) for d in body.documents],
        )
        return to_json(await clients.reasoning.Analyze(request, timeout_s=600))

    @api.get("/api/v1/reasoning/router")
    async def router_status() -> dict[str, Any]:
        return to_json(await clients.reasoning.RouterStatus(reasoning_pb2.RouterStatusRequest()))

    return api
