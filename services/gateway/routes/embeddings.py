from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from bev.embeddings.v1 import embeddings_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import to_json


class EmbedBody(BaseModel):
    texts: list[str] = Field(min_length=1)
    model: str = ""


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["embeddings"])

    @api.post("/api/v1/embeddings/embed")
    async def embed(body: EmbedBody) -> dict[str, Any]:
        return to_json(await clients.embeddings.Embed(embeddings_pb2.EmbedRequest(texts=body.texts, model=body.model)))

    return api
