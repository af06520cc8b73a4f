from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from bev.avatar.v1 import avatar_pb2
from services.gateway.clients import Clients
from services.gateway.routes.common import enum_value, to_json


class AvatarStateBody(BaseModel):
    session_id: str = Field(min_length=1)
    state: str = Field(description="idle, collecting, analyzing, hypothesizing, debating, reporting, alert, error")
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    severity: float | None = Field(default=None, ge=0.0, le=1.0)
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    personality: str = ""


def router(clients: Clients) -> APIRouter:
    api = APIRouter(tags=["avatar"])

    @api.post("/api/v1/avatar/state")
    async def avatar_state(body: AvatarStateBody) -> dict[str, Any]:
        state = enum_value(avatar_pb2.ResearchState, "RESEARCH_STATE_", body.state, "state")
        request = avatar_pb2.MapStateRequest(session_id=body.session_id, state=state, personality=body.personality)
        for name in ("confidence", "severity", "progress"):
            value = getattr(body, name)
            if value is not None:
                setattr(request, name, value)
        return to_json(await clients.avatar.MapState(request))

    return api
