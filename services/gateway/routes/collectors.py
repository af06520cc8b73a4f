from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from bev.collectors.v1 import collectors_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import to_json


class ExtractBody(BaseModel):
    text: str


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["collectors"])

    @api.post("/api/v1/indicators/extract")
    async def extract(body: ExtractBody) -> dict[str, Any]:
        return to_json(await clients.collectors.Extract(collectors_pb2.ExtractRequest(text=body.text)))

    return api
