from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from bev.reasoning.v1 import reasoning_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import to_json


class GenerateBody(BaseModel):
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] = []


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["reasoning"])

    @api.post("/api/v1/reasoning/generate")
    async def generate(body: GenerateBody) -> dict[str, Any]:
        request = reasoning_pb2.GenerateRequest(
            prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature, stop=body.stop
        )
        return to_json(await clients.reasoning.Generate(request))

    return api
